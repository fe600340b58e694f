// The tensors one chunk forward consumes, built from a planned chunk's flat inputs.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>

#include "data/chunk_inputs.h"

namespace chunkflow::models {

// Context parallelism (parallel/context_parallel.h): this rank holds only some rows of a chunk —
// two pieces of every segment — and attention gathers every rank's K/V before it reads them.
struct ContextShard {
  // Differentiable and collective over the cp group: this rank's rows [local tokens, ...] ->
  // every rank's rows in chunk order [chunk tokens, ...]. Its backward sums the gradient over the
  // group and keeps this rank's rows.
  std::function<torch::Tensor(const torch::Tensor&)> gather_chunk_rows;
  // int64 [local key rows]: rows of the full keys (K/V prefix followed by the chunk's tokens)
  // that the local query pieces attend to, piece after piece; ChunkBatch::cu_seqlens_k and
  // max_seqlen_k describe this local layout.
  torch::Tensor key_rows;
  int64_t chunk_tokens = 0;  // tokens of the whole chunk over all cp ranks
};

struct ChunkBatch {
  torch::Tensor input_ids;     // [tokens] int64
  torch::Tensor positions;     // [tokens] int64: position within the original sequence (RoPE)
  torch::Tensor labels;        // [tokens] int64: next token or -100
  torch::Tensor cu_seqlens_q;  // [segments + 1] int32, CPU
  torch::Tensor cu_seqlens_k;  // [segments + 1] int32, CPU; includes the K/V prefix
  int64_t max_seqlen_q = 0;
  int64_t max_seqlen_k = 0;
  // K/V rows of the first segment that come from earlier chunks (0 = no prefix). Only a chunk's
  // first segment may have a prefix: the plan puts a split sequence's piece first.
  int64_t prefix_len = 0;
  // Set when the chunk is split over context-parallel ranks: the tensors above then hold this
  // rank's rows only; cu_seqlens_q is [pieces + 1] over those rows (the non-empty query pieces),
  // cu_seqlens_k [pieces + 1] over ContextShard::key_rows, and max_seqlen_q/k are per piece.
  std::shared_ptr<const ContextShard> context;
  int64_t tokens() const { return input_ids.size(0); }
};

// Converts gathered chunk inputs to tensors on `device` (the cu_seqlens stay on the CPU for the
// CPU kernels and are copied by the CUDA adapter). Checks the one-prefix rule above.
ChunkBatch make_chunk_batch(const data::ChunkInputs& inputs, const torch::Device& device);

}  // namespace chunkflow::models
