// Chunk inputs -> tensors; see chunk_batch.h.
#include "models/chunk_batch.h"

#include <algorithm>

#include "core/error.h"

namespace chunkflow::models {
namespace {

torch::Tensor int64_tensor(const std::vector<int32_t>& values, const torch::Device& device) {
  return torch::tensor(values, torch::dtype(torch::kInt32)).to(device, torch::kInt64);
}

}  // namespace

ChunkBatch make_chunk_batch(const data::ChunkInputs& inputs, const torch::Device& device) {
  ChunkBatch batch;
  batch.input_ids = int64_tensor(inputs.input_ids, device);
  batch.positions = int64_tensor(inputs.positions, device);
  batch.labels = int64_tensor(inputs.labels, device);
  batch.cu_seqlens_q = torch::tensor(inputs.cu_seqlens_q, torch::dtype(torch::kInt32));
  batch.cu_seqlens_k = torch::tensor(inputs.cu_seqlens_k, torch::dtype(torch::kInt32));
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
