// Context-parallel chunk sharding and the K/V gather; see context_parallel.h.
#include "parallel/context_parallel.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <algorithm>
#include <memory>

#include "core/error.h"

namespace chunkflow::parallel {
namespace {

// Backward of all_gather_rows. Every rank's gathered rows were read by every rank's attention,
// so the gradient of this rank's rows is the sum over the group of each rank's gradient block:
// one reduce-scatter over blocks padded to the largest row count.
class GatherRowsBackward : public torch::autograd::Node {
 public:
  GatherRowsBackward(Communicator* group, std::vector<int64_t> rows_of_rank, std::vector<int64_t> row_shape,
                     torch::TensorOptions options)
      : group_(group), rows_of_rank_(std::move(rows_of_rank)), row_shape_(std::move(row_shape)), options_(options) {}

  torch::autograd::variable_list apply(torch::autograd::variable_list&& gradients) override {
    const int64_t most_rows = *std::max_element(rows_of_rank_.begin(), rows_of_rank_.end());
    std::vector<int64_t> padded_shape = row_shape_;
    padded_shape.insert(padded_shape.begin(), most_rows * static_cast<int64_t>(rows_of_rank_.size()));
    // Every rank must enter the reduce-scatter, even one whose graph produced no gradient here.
    torch::Tensor padded = torch::zeros(padded_shape, options_);
    if (gradients[0].defined()) {
      int64_t offset = 0;
      for (size_t r = 0; r < rows_of_rank_.size(); ++r) {
        padded.narrow(0, static_cast<int64_t>(r) * most_rows, rows_of_rank_[r])
            .copy_(gradients[0].narrow(0, offset, rows_of_rank_[r]));
        offset += rows_of_rank_[r];
      }
    }
    const torch::Tensor mine = group_->reduce_scatter(padded, ReduceOp::kSum);
    return {mine.narrow(0, 0, rows_of_rank_[static_cast<size_t>(group_->rank())])};
  }
  std::string name() const override { return "chunkflow::GatherRowsBackward"; }

 private:
  Communicator* group_;  // owned by the device mesh, which outlives every step's graphs
  std::vector<int64_t> rows_of_rank_;
  std::vector<int64_t> row_shape_;  // the shape of one row
  torch::TensorOptions options_;
};

}  // namespace

ContextLayout context_layout(std::span<const int32_t> chunk_cu_seqlens_q, int64_t prefix_len, int cp_size,
                             int cp_rank) {
  CF_ASSERT(cp_size >= 1 && cp_rank >= 0 && cp_rank < cp_size, "cp rank ", cp_rank, " of ", cp_size);
  CF_ASSERT(!chunk_cu_seqlens_q.empty() && chunk_cu_seqlens_q.front() == 0, "cu_seqlens must start at 0");
  ContextLayout layout;
  layout.cu_seqlens_q.push_back(0);
  for (ContextPass& pass : layout.passes) {
    pass.cu_seqlens_q.push_back(0);
    pass.cu_seqlens_k.push_back(0);
  }
  const int64_t pieces_per_segment = 2 * int64_t{cp_size};
  for (size_t segment = 0; segment + 1 < chunk_cu_seqlens_q.size(); ++segment) {
    const int64_t start = chunk_cu_seqlens_q[segment];
    const int64_t length = chunk_cu_seqlens_q[segment + 1] - start;
    // Keys of the full chunk: the first segment's prefix rows come first, then the chunk's rows.
    const int64_t segment_prefix = segment == 0 ? prefix_len : 0;
    const int64_t key_end = prefix_len + start + length;
    const std::array<int64_t, 2> pieces = {int64_t{cp_rank}, pieces_per_segment - 1 - cp_rank};
    for (size_t which = 0; which < 2; ++which) {
      ContextPass& pass = layout.passes[which];
      const int64_t begin = length * pieces[which] / pieces_per_segment;
      const int64_t end = length * (pieces[which] + 1) / pieces_per_segment;
      const int64_t key_start = pass.cu_seqlens_k.back();
      // Causal: the piece reads the segment's keys up to its own last token.
      const int64_t key_stop = begin == end ? key_start : key_start + segment_prefix + end;
      if (begin < end) {
        for (int64_t row = start + begin; row < start + end; ++row) {
          pass.query_rows.push_back(static_cast<int64_t>(layout.rows.size()));
          layout.rows.push_back(row);
        }
        layout.cu_seqlens_q.push_back(static_cast<int32_t>(layout.rows.size()));
        pass.cu_seqlens_q.push_back(static_cast<int32_t>(pass.query_rows.size()));
        pass.cu_seqlens_k.push_back(static_cast<int32_t>(key_stop));
        pass.max_seqlen_q = std::max(pass.max_seqlen_q, end - begin);
        pass.max_seqlen_k = std::max(pass.max_seqlen_k, key_stop - key_start);
      }
      // The segment's remaining keys, read by no query of this pass.
      if (key_stop < key_end) {
        pass.cu_seqlens_q.push_back(pass.cu_seqlens_q.back());
        pass.cu_seqlens_k.push_back(static_cast<int32_t>(key_end));
        pass.max_seqlen_k = std::max(pass.max_seqlen_k, key_end - key_stop);
      }
    }
  }
  return layout;
}

torch::Tensor all_gather_rows(const torch::Tensor& local, Communicator& group, const std::vector<int64_t>& rows_of_rank) {
  CF_ASSERT(static_cast<int>(rows_of_rank.size()) == group.size(), "rows_of_rank has ", rows_of_rank.size(),
            " entries for a group of ", group.size());
  const int rank = group.rank();
  CF_ASSERT(local.size(0) == rows_of_rank[static_cast<size_t>(rank)], "rank ", rank, " holds ", local.size(0),
            " rows, layout says ", rows_of_rank[static_cast<size_t>(rank)]);
  const int64_t most_rows = *std::max_element(rows_of_rank.begin(), rows_of_rank.end());
  // Ranks hold different row counts: pad every block to the largest so one all-gather suffices.
  std::vector<int64_t> padded_shape = local.sizes().vec();
  padded_shape[0] = most_rows;
  torch::Tensor gathered;
  {
    torch::NoGradGuard no_grad;
    torch::Tensor padded = torch::zeros(padded_shape, local.options());
    padded.narrow(0, 0, local.size(0)).copy_(local);
    const torch::Tensor blocks = group.all_gather(padded);
    std::vector<torch::Tensor> rows;
    for (int r = 0; r < group.size(); ++r) rows.push_back(blocks.narrow(0, r * most_rows, rows_of_rank[static_cast<size_t>(r)]));
    gathered = torch::cat(rows, 0);
  }
  if (torch::GradMode::is_enabled() && local.requires_grad()) {
    const std::vector<int64_t> row_shape(local.sizes().begin() + 1, local.sizes().end());
    auto node = std::shared_ptr<GatherRowsBackward>(
        new GatherRowsBackward(&group, rows_of_rank, row_shape, local.options()), torch::autograd::deleteNode);
    node->set_next_edges(torch::autograd::collect_next_edges(local));
    torch::autograd::set_history(gathered, node);
  }
  return gathered;
}

models::ChunkBatch shard_chunk_batch(const models::ChunkBatch& chunk, Communicator& group) {
  if (group.size() == 1) return chunk;
  CF_ASSERT(chunk.context == nullptr, "chunk is already sharded");
  const torch::Tensor cu_tensor = chunk.cu_seqlens_q.to(torch::kCPU, torch::kInt32).contiguous();
  const std::span<const int32_t> cu(cu_tensor.data_ptr<int32_t>(), static_cast<size_t>(cu_tensor.numel()));

  // Every rank computes every rank's layout: the gather needs all row counts and the order.
  std::vector<int64_t> rows_of_rank;
  std::vector<int64_t> rank_order_rows;  // chunk row of each gathered row, in rank order
  ContextLayout mine;
  for (int r = 0; r < group.size(); ++r) {
    ContextLayout layout = context_layout(cu, chunk.prefix_len, group.size(), r);
    rows_of_rank.push_back(static_cast<int64_t>(layout.rows.size()));
    rank_order_rows.insert(rank_order_rows.end(), layout.rows.begin(), layout.rows.end());
    if (r == group.rank()) mine = std::move(layout);
  }
  const int64_t chunk_tokens = chunk.tokens();
  CF_ASSERT(static_cast<int64_t>(rank_order_rows.size()) == chunk_tokens, "cp layouts cover ",
            rank_order_rows.size(), " of ", chunk_tokens, " rows");
  std::vector<int64_t> chunk_order(static_cast<size_t>(chunk_tokens));
  for (size_t position = 0; position < rank_order_rows.size(); ++position) {
    chunk_order[static_cast<size_t>(rank_order_rows[position])] = static_cast<int64_t>(position);
  }

  const torch::Device device = chunk.input_ids.device();
  const auto on_device = [&](const std::vector<int64_t>& values) { return models::to_device(values, torch::kInt64, device); };
  const torch::Tensor rows = on_device(mine.rows);
  models::ChunkBatch local;
  local.input_ids = chunk.input_ids.index_select(0, rows);
  local.positions = chunk.positions.index_select(0, rows);
  local.labels = chunk.labels.index_select(0, rows);
  for (const int64_t row : mine.rows) {
    local.host_labels.push_back(chunk.host_labels.at(static_cast<size_t>(row)));
    local.host_positions.push_back(chunk.host_positions.at(static_cast<size_t>(row)));
  }
  local.prefix_len = chunk.prefix_len;
  local.labels_checked = chunk.labels_checked;

  auto shard = std::make_shared<models::ContextShard>();
  shard->chunk_tokens = chunk_tokens;
  std::vector<int64_t> pass_order;  // local row of each attention output row, pass after pass
  for (size_t which = 0; which < 2; ++which) {
    const ContextPass& pass = mine.passes[which];
    models::AttentionPass& out = shard->passes[which];
    out.query_rows = on_device(pass.query_rows);
    out.cu_seqlens_q = torch::tensor(pass.cu_seqlens_q, torch::dtype(torch::kInt32));
    out.cu_seqlens_k = torch::tensor(pass.cu_seqlens_k, torch::dtype(torch::kInt32));
    if (device.is_cuda()) {
      out.device_cu_seqlens_q = models::to_device(pass.cu_seqlens_q, torch::kInt32, device);
      out.device_cu_seqlens_k = models::to_device(pass.cu_seqlens_k, torch::kInt32, device);
    }
    out.max_seqlen_q = pass.max_seqlen_q;
    out.max_seqlen_k = pass.max_seqlen_k;
    pass_order.insert(pass_order.end(), pass.query_rows.begin(), pass.query_rows.end());
  }
  std::vector<int64_t> output_order(pass_order.size());
  for (size_t position = 0; position < pass_order.size(); ++position) {
    output_order[static_cast<size_t>(pass_order[position])] = static_cast<int64_t>(position);
  }
  shard->output_order = on_device(output_order);
  // The whole-chunk offsets stay for reference; attention uses the passes.
  local.cu_seqlens_q = torch::tensor(mine.cu_seqlens_q, torch::dtype(torch::kInt32));
  local.cu_seqlens_k = chunk.cu_seqlens_k;
  local.max_seqlen_q = std::max(mine.passes[0].max_seqlen_q, mine.passes[1].max_seqlen_q);
  local.max_seqlen_k = chunk.max_seqlen_k;
  const torch::Tensor order = on_device(chunk_order);
  Communicator* group_pointer = &group;
  shard->gather_chunk_rows = [group_pointer, rows_of_rank, order](const torch::Tensor& local_rows) {
    return all_gather_rows(local_rows, *group_pointer, rows_of_rank).index_select(0, order);
  };
  local.context = std::move(shard);
  return local;
}

}  // namespace chunkflow::parallel
