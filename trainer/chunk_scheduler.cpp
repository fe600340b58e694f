// State-aware scheduling; see chunk_scheduler.h.
#include "trainer/chunk_scheduler.h"

#include <map>

#include "core/error.h"
#include "trainer/kv_state_store.h"

namespace chunkflow::trainer {

void LossTotals::add(const LossTotals& other) {
  loss_sum += other.loss_sum;
  loss_tokens += other.loss_tokens;
  far_loss_sum += other.far_loss_sum;
  far_tokens += other.far_tokens;
  chunk_forwards += other.chunk_forwards;
  chunk_recomputes += other.chunk_recomputes;
  peak_state_bytes = std::max(peak_state_bytes, other.peak_state_bytes);
  real_tokens += other.real_tokens;
}

ChunkScheduler::ChunkScheduler(models::CausalLM model, int64_t resident_chunks)
    : model_(std::move(model)), resident_chunks_(resident_chunks) {
  CF_CHECK(resident_chunks_ >= 1, "chunking.resident_chunks must be >= 1, got ", resident_chunks_);
}

void ChunkScheduler::measure_far_loss(const models::ChunkBatch& batch, const torch::Tensor& hidden,
                                      int64_t chunk_size, LossTotals* totals) {
  torch::NoGradGuard no_grad;
  const torch::Tensor far = (batch.positions + 1 >= chunk_size).logical_and(batch.labels != -100);
  const int64_t count = far.sum().item<int64_t>();
  if (count == 0) return;
  const torch::Tensor rows = far.nonzero().squeeze(1);
  totals->far_loss_sum += model_->loss_sum(hidden.detach().index_select(0, rows), batch.labels.index_select(0, rows))
                              .item<double>();
  totals->far_tokens += count;
}

LossTotals ChunkScheduler::run_standalone(const data::ChunkPlan& plan, int32_t chunk,
                                          const ChunkBatchSource& batches, double loss_scale) {
  LossTotals totals;
  const models::ChunkBatch batch = batches(chunk);
  const models::ChunkForward forward = model_->forward_chunk(batch);
  const torch::Tensor loss = model_->loss_sum(forward.hidden, batch.labels);
  (loss * loss_scale).backward();
  totals.loss_sum = loss.item<double>();
  totals.loss_tokens = (batch.labels != -100).sum().item<int64_t>();
  totals.chunk_forwards = 1;
  totals.real_tokens = batch.tokens();
  measure_far_loss(batch, forward.hidden, plan.chunk_size(), &totals);
  return totals;
}

LossTotals ChunkScheduler::run_split_sequence(const data::ChunkPlan& plan, const data::ChunkGroup& group,
                                              const ChunkBatchSource& batches, double loss_scale) {
  LossTotals totals;
  const int64_t pieces = group.chunk_count;
  const int64_t first_kept = std::max<int64_t>(0, pieces - resident_chunks_);
  const configs::ModelConfig& config = model_->config();
  const int64_t chunk_size = plan.chunk_size();
  KVStateStore state(config.num_hidden_layers, pieces * chunk_size, config.num_key_value_heads,
                     config.effective_head_dim(), model_->parameters().front().options());
  totals.peak_state_bytes = state.bytes();

  // What a chunk needs between its forward and its backward.
  struct Live {
    models::ChunkBatch batch;
    models::ChunkForward forward;
    torch::Tensor loss;
  };
  auto forward_piece = [&](int64_t piece, bool with_grad) {
    Live live;
    live.batch = batches(group.first_chunk + static_cast<int32_t>(piece));
    CF_ASSERT(live.batch.prefix_len == (piece == 0 ? 0 : plan.segments()[static_cast<size_t>(
                                                              plan.chunks()[static_cast<size_t>(group.first_chunk + piece)].first_segment)].prefix_len),
              "chunk batch prefix does not match the plan");
    torch::AutoGradMode grad_mode(with_grad);
    live.forward = model_->forward_chunk(live.batch, state.prefix(piece * chunk_size));
    live.loss = model_->loss_sum(live.forward.hidden, live.batch.labels);
    ++totals.chunk_forwards;
    return live;
  };
  auto backward_piece = [&](int64_t piece, Live& live) {
    std::vector<torch::Tensor> outputs = {live.loss * loss_scale};
    std::vector<torch::Tensor> gradients = {torch::ones_like(outputs[0])};
    // The last piece's K/V feeds no later chunk; the others receive what later chunks sent back.
    if (piece + 1 < pieces) {
      const auto accumulated = state.gradients(piece * chunk_size, chunk_size);
      for (size_t layer = 0; layer < accumulated.size(); ++layer) {
        outputs.push_back(live.forward.own_kv[layer].k);
        gradients.push_back(accumulated[layer].k);
        outputs.push_back(live.forward.own_kv[layer].v);
        gradients.push_back(accumulated[layer].v);
      }
    }
    // The prefix rows' gradient goes straight into the state's accumulators (attach_prefix).
    torch::autograd::backward(outputs, gradients);
  };

  // Pass 1: forward in order; keep graphs only for the last `resident_chunks`.
  std::map<int64_t, Live> kept;
  for (int64_t piece = 0; piece < pieces; ++piece) {
    const bool keep = piece >= first_kept;
    Live live = forward_piece(piece, keep);
    totals.loss_sum += live.loss.item<double>();
    totals.loss_tokens += (live.batch.labels != -100).sum().item<int64_t>();
    totals.real_tokens += live.batch.tokens();
    measure_far_loss(live.batch, live.forward.hidden, plan.chunk_size(), &totals);
    if (keep) kept.emplace(piece, std::move(live));
  }
  // Pass 2 (kept chunks) and pass 3 (recompute + backward), both from the latest chunk down.
  for (int64_t piece = pieces - 1; piece >= 0; --piece) {
    if (piece >= first_kept) {
      backward_piece(piece, kept.at(piece));
      kept.erase(piece);
    } else {
      Live live = forward_piece(piece, true);
      ++totals.chunk_recomputes;
      backward_piece(piece, live);
    }
  }
  return totals;
}

LossTotals ChunkScheduler::run_group(const data::ChunkPlan& plan, int32_t group_index,
                                     const ChunkBatchSource& batches, double loss_scale) {
  const data::ChunkGroup& group = plan.groups().at(static_cast<size_t>(group_index));
  if (group.split_sequence < 0) return run_standalone(plan, group.first_chunk, batches, loss_scale);
  return run_split_sequence(plan, group, batches, loss_scale);
}

LossTotals ChunkScheduler::run_plan(const data::ChunkPlan& plan, const ChunkBatchSource& batches,
                                    double loss_scale) {
  LossTotals totals;
  for (int32_t group = 0; group < static_cast<int32_t>(plan.groups().size()); ++group) {
    totals.add(run_group(plan, group, batches, loss_scale));
  }
  return totals;
}

}  // namespace chunkflow::trainer
