// The tensors one chunk forward consumes, built from a planned chunk's flat inputs.
#pragma once

#include <torch/torch.h>

#include <array>
#include <functional>
#include <memory>
#include <vector>

#include "data/chunk_inputs.h"
#include "kernels/attention_torch.h"

namespace chunkflow::models {

// One varlen attention call over a chunk's full keys (K/V prefix, then chunk rows), read in place:
// segment b reads keys [cu_seqlens_k[b], cu_seqlens_k[b+1]); segments without queries cover key
// rows that no query of the call reads (parallel::ContextPass).
struct AttentionPass {
  torch::Tensor query_rows;    // int64 [queries]: this rank's rows that are this call's queries
  torch::Tensor cu_seqlens_q;  // [segments + 1] int32, CPU
  torch::Tensor cu_seqlens_k;  // [segments + 1] int32, CPU; ends at prefix + chunk tokens
  torch::Tensor device_cu_seqlens_q, device_cu_seqlens_k;  // the same on a CUDA device; else undefined
  int64_t max_seqlen_q = 0, max_seqlen_k = 0;
  kernels::VarlenOffsets offsets() const {
    return {cu_seqlens_q, cu_seqlens_k, device_cu_seqlens_q, device_cu_seqlens_k, max_seqlen_q, max_seqlen_k};
  }
};

// Context parallelism (parallel/context_parallel.h): this rank holds only some rows of a chunk —
// two pieces of every segment — and attention gathers every rank's K/V before it reads them.
struct ContextShard {
  // Differentiable and collective over the cp group: this rank's rows [local tokens, ...] ->
  // every rank's rows in chunk order [chunk tokens, ...]. Its backward sums the gradient over the
  // group and keeps this rank's rows.
  std::function<torch::Tensor(const torch::Tensor&)> gather_chunk_rows;
  // Two attention calls (early pieces, late pieces: within one call no two pieces share a key
  // row), and int64 [local tokens]: where local row i sits in the two calls' outputs, concatenated.
  std::array<AttentionPass, 2> passes;
  torch::Tensor output_order;
  int64_t chunk_tokens = 0;  // tokens of the whole chunk over all cp ranks
};

struct ChunkBatch {
  torch::Tensor input_ids;     // [tokens] int64
  torch::Tensor positions;     // [tokens] int64: position within the original sequence (RoPE)
  torch::Tensor labels;        // [tokens] int64: next token or -100
  torch::Tensor cu_seqlens_q;  // [segments + 1] int32, CPU
  torch::Tensor cu_seqlens_k;  // [segments + 1] int32, CPU; includes the K/V prefix
  // The offsets on the batch's CUDA device (copied once per chunk, not once per layer call);
  // undefined on the CPU.
  torch::Tensor device_cu_seqlens_q, device_cu_seqlens_k;
  int64_t max_seqlen_q = 0;
  int64_t max_seqlen_k = 0;
  // Host copies of this rank's labels and positions: loss-token counts and far-token rows come
  // from them without reading the device.
  std::vector<int32_t> host_labels, host_positions;
  // Set by whoever built the batch from token ids it checked against the vocabulary (the trainer):
  // the loss then skips its own label check, a device-to-host read on CUDA.
  bool labels_checked = false;
  // K/V rows of the first segment that come from earlier chunks (0 = no prefix). Only a chunk's
  // first segment may have a prefix: the plan puts a split sequence's piece first.
  int64_t prefix_len = 0;
  // Set when the chunk is split over context-parallel ranks: input_ids, positions and labels then
  // hold this rank's rows only, cu_seqlens_q is [pieces + 1] over them, cu_seqlens_k and
  // max_seqlen_k stay the whole chunk's, and attention runs ContextShard::passes instead.
  std::shared_ptr<const ContextShard> context;
  int64_t tokens() const { return input_ids.size(0); }
  kernels::VarlenOffsets offsets() const {
    return {cu_seqlens_q, cu_seqlens_k, device_cu_seqlens_q, device_cu_seqlens_k, max_seqlen_q, max_seqlen_k};
  }
  // Rows whose label is not the ignore index (host count).
  int64_t loss_tokens() const;
};

// Converts gathered chunk inputs to tensors on `device`: one host-to-device copy per tensor, from
// pinned memory and asynchronous on the current stream when `device` is CUDA (the cu_seqlens stay
// on the CPU too, for the host checks and the CPU kernels). Checks the one-prefix rule above.
ChunkBatch make_chunk_batch(const data::ChunkInputs& inputs, const torch::Device& device);

// host int32 values -> a tensor of `dtype` on `device`: through pinned memory and non-blocking
// on CUDA (the pinned buffer stays alive until the copy ran: the caching host allocator records
// the stream), a plain tensor on the CPU.
torch::Tensor to_device(const std::vector<int32_t>& values, torch::ScalarType dtype, const torch::Device& device);
torch::Tensor to_device(const std::vector<int64_t>& values, torch::ScalarType dtype, const torch::Device& device);

}  // namespace chunkflow::models
