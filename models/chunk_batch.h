// The tensors one chunk forward consumes, built from a planned chunk's flat inputs.
#pragma once

#include <torch/torch.h>

#include "data/chunk_inputs.h"

namespace chunkflow::models {

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
  int64_t tokens() const { return input_ids.size(0); }
};

// Converts gathered chunk inputs to tensors on `device` (the cu_seqlens stay on the CPU for the
// CPU kernels and are copied by the CUDA adapter). Checks the one-prefix rule above.
ChunkBatch make_chunk_batch(const data::ChunkInputs& inputs, const torch::Device& device);

}  // namespace chunkflow::models
