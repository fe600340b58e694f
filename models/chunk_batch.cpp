// Chunk inputs -> tensors; see chunk_batch.h.
#include "models/chunk_batch.h"

#include <algorithm>

#include "core/error.h"

namespace chunkflow::models {
namespace {

torch::Tensor host_to_device(const torch::Tensor& host, torch::ScalarType dtype, const torch::Device& device) {
  if (device.is_cpu()) return host.to(dtype);
  // Pinned memory makes the copy asynchronous; the caching host allocator keeps the buffer until
  // the copy that reads it has run on the stream.
  return host.to(dtype).pin_memory().to(device, /*non_blocking=*/true);
}

}  // namespace

torch::Tensor to_device(const std::vector<int32_t>& values, torch::ScalarType dtype, const torch::Device& device) {
  return host_to_device(torch::tensor(values, torch::dtype(torch::kInt32)), dtype, device);
}

torch::Tensor to_device(const std::vector<int64_t>& values, torch::ScalarType dtype, const torch::Device& device) {
  return host_to_device(torch::tensor(values, torch::dtype(torch::kInt64)), dtype, device);
}

int64_t ChunkBatch::loss_tokens() const {
  int64_t count = 0;
  for (const int32_t label : host_labels) count += label != data::kIgnoreLabel;
  return count;
}

ChunkBatch make_chunk_batch(const data::ChunkInputs& inputs, const torch::Device& device) {
  ChunkBatch batch;
  batch.input_ids = to_device(inputs.input_ids, torch::kInt64, device);
  batch.positions = to_device(inputs.positions, torch::kInt64, device);
  batch.labels = to_device(inputs.labels, torch::kInt64, device);
  batch.host_labels = inputs.labels;
  batch.host_positions = inputs.positions;
  batch.cu_seqlens_q = torch::tensor(inputs.cu_seqlens_q, torch::dtype(torch::kInt32));
  batch.cu_seqlens_k = torch::tensor(inputs.cu_seqlens_k, torch::dtype(torch::kInt32));
  if (device.is_cuda()) {
    batch.device_cu_seqlens_q = to_device(inputs.cu_seqlens_q, torch::kInt32, device);
    batch.device_cu_seqlens_k = to_device(inputs.cu_seqlens_k, torch::kInt32, device);
  }
  for (size_t s = 0; s + 1 < inputs.cu_seqlens_q.size(); ++s) {
    batch.max_seqlen_q = std::max<int64_t>(batch.max_seqlen_q, inputs.cu_seqlens_q[s + 1] - inputs.cu_seqlens_q[s]);
    batch.max_seqlen_k = std::max<int64_t>(batch.max_seqlen_k, inputs.cu_seqlens_k[s + 1] - inputs.cu_seqlens_k[s]);
  }
  for (size_t s = 0; s < inputs.prefix_lens.size(); ++s) {
    CF_ASSERT(s == 0 || inputs.prefix_lens[s] == 0, "only a chunk's first segment may carry a K/V prefix");
  }
  batch.prefix_len = inputs.prefix_lens.empty() ? 0 : inputs.prefix_lens[0];
  return batch;
}

}  // namespace chunkflow::models
