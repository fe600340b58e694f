// State-aware scheduling on one pipeline stage; see chunk_scheduler.h.
#include "trainer/chunk_scheduler.h"

#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <vector>

#include "core/error.h"
#include "core/strings.h"
#include "data/chunk_inputs.h"
#include "parallel/pipeline_schedule.h"
#include "trainer/device_setup.h"
#include "trainer/kv_state_store.h"

namespace chunkflow::trainer {
namespace {

// Activations flow to the next stage, their gradients back; one tag per direction keeps each
// stream in send order (MPI never reorders messages of one tag between two ranks).
constexpr int kActivationTag = 7101;
constexpr int kActivationGradientTag = 7102;

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// One run_groups call on one stage: executes the stage's ops of the schedule.
class StageRun {
 public:
  StageRun(models::CausalLM& model, const PipelineStage& pipeline, bool recompute_layers, const data::ChunkPlan& plan,
           const ChunkBatchSource& batches, double loss_scale)
      : model_(model), pipeline_(pipeline), recompute_layers_(recompute_layers), plan_(plan), batches_(batches),
        loss_scale_(loss_scale), busy_timer_(model_->parameters().front().device()) {
    first_stage_ = pipeline_.stage == 0;
    last_stage_ = pipeline_.stage == pipeline_.stages - 1;
    CF_ASSERT(pipeline_.stages == 1 || pipeline_.group != nullptr, "a pipeline of ", pipeline_.stages,
              " stages needs its process group");
  }

  void run(const parallel::PipelineOp& op) {
    const auto start = Clock::now();
    waited_ = 0;
    const bool is_forward = op.kind == parallel::PipelineOp::Kind::kForward;
    busy_timer_.begin();
    if (is_forward) {
      forward(op);
    } else {
      backward(op);
    }
    busy_timer_.end();
    if (pipeline_.trace != nullptr) {
      const char* category = is_forward ? "forward" : op.recompute ? "recompute" : "backward";
      pipeline_.trace->add(core::str_cat(is_forward ? "F" : op.recompute ? "R+B" : "B", " chunk ", op.chunk), category,
                           TraceRecorder::kCompute, start, Clock::now(),
                           core::str_cat("\"chunk\": ", op.chunk, ", \"group\": ", op.group, ", \"tokens\": ",
                                         plan_.chunks().at(static_cast<size_t>(op.chunk)).tokens,
                                         ", \"wait_ms\": ", waited_ * 1e3));
    }
    // Free the buffers of sends that have completed.
    while (!sends_.empty() && sends_.front()->done()) sends_.pop_front();
  }

  // Waits for the sends, then reads the loss sums: the one device-to-host read of the call.
  void finish() {
    for (auto& send : sends_) send->wait();
    sends_.clear();
    if (loss_sum_.defined()) totals.loss_sum = loss_sum_.item<double>();
    if (far_loss_sum_.defined()) totals.far_loss_sum = far_loss_sum_.item<double>();
    totals.busy_seconds = busy_timer_.seconds();
    CF_ASSERT(live_.empty() && kept_inputs_.empty() && states_.empty(), "pipeline schedule left ", live_.size(),
              " chunks without backward");
  }

  LossTotals totals;

 private:
  // What a chunk needs between its forward and its backward on this stage.
  struct Live {
    models::ChunkBatch batch;
    torch::Tensor input;   // stage input (received activations); undefined on the first stage
    torch::Tensor output;  // activations sent on (not the last stage)
    torch::Tensor loss;    // summed cross-entropy (the last stage)
    std::vector<models::LayerKV> own_kv;
  };

  struct ChunkPlace {
    int32_t group_index;  // into plan.groups(); keys the K/V state of a split sequence
    const data::ChunkGroup* group;
    int64_t piece;
    bool split() const { return group->split_sequence >= 0; }
  };
  ChunkPlace place(int32_t chunk) const {
    const data::Chunk& planned = plan_.chunks().at(static_cast<size_t>(chunk));
    const data::ChunkGroup& group = plan_.groups().at(static_cast<size_t>(planned.group));
    return {planned.group, &group, chunk - group.first_chunk};
  }

  std::vector<models::KVPrefix> state_for(int32_t chunk) {
    const ChunkPlace where = place(chunk);
    if (!where.split()) return {};
    auto found = states_.find(where.group_index);
    if (found == states_.end()) {
      const configs::ModelConfig& config = model_->config();
      // K/V in the activations' dtype; their gradients accumulate over later chunks in float32.
      const auto device = model_->parameters().front().device();
      found = states_
                  .emplace(where.group_index,
                           KVStateStore(model_->stage_layers(), where.group->chunk_count * plan_.chunk_size(),
                                        model_->local_kv_heads(), config.effective_head_dim(),
                                        torch::TensorOptions().dtype(model_->compute_dtype()).device(device),
                                        torch::TensorOptions().dtype(torch::kFloat).device(device)))
                  .first;
      int64_t held = 0;
      for (const auto& entry : states_) held += entry.second.bytes();
      // Every stage reports its own (earlier stages may hold more layers); the trainer takes the max.
      totals.peak_state_bytes = std::max(totals.peak_state_bytes, held);
    }
    return found->second.prefix(where.piece * plan_.chunk_size());
  }

  torch::Tensor receive(int64_t rows, int peer, int tag) {
    const auto start = Clock::now();
    const configs::ModelConfig& config = model_->config();
    torch::Tensor tensor = torch::empty(
        {rows, config.hidden_size},
        torch::TensorOptions().dtype(model_->compute_dtype()).device(model_->parameters().front().device()));
    // Waiting for a peer is not this stage's work: the busy interval pauses around it.
    busy_timer_.end();
    pipeline_.group->recv(tensor, peer, tag);
    busy_timer_.begin();
    waited_ += seconds_since(start);
    if (pipeline_.trace != nullptr) {
      pipeline_.trace->add(tag == kActivationTag ? "wait for activations" : "wait for gradients", "wait",
                           TraceRecorder::kWait, start, Clock::now(), core::str_cat("\"from_stage\": ", peer));
    }
    return tensor;
  }

  // Adds `value` (a 0-dim device tensor) to `sum` in float64 on the device, without reading it.
  static void accumulate(torch::Tensor& sum, const torch::Tensor& value) {
    const torch::Tensor wide = value.detach().to(torch::kFloat64);
    sum = sum.defined() ? sum + wide : wide;
  }

  // Far rows come from the host copies of positions and labels: no device read.
  void measure_far_loss(const models::ChunkBatch& batch, const torch::Tensor& hidden) {
    std::vector<int64_t> far_rows;
    for (size_t row = 0; row < batch.host_labels.size(); ++row) {
      if (batch.host_labels[row] != data::kIgnoreLabel && batch.host_positions[row] + 1 >= plan_.chunk_size()) {
        far_rows.push_back(static_cast<int64_t>(row));
      }
    }
    if (far_rows.empty()) return;
    torch::NoGradGuard no_grad;
    const torch::Tensor rows = models::to_device(far_rows, torch::kInt64, hidden.device());
    accumulate(far_loss_sum_, model_->loss_sum(hidden.detach().index_select(0, rows), batch.labels.index_select(0, rows),
                                               batch.labels_checked));
    totals.far_tokens += static_cast<int64_t>(far_rows.size());
  }

  // Forward of this stage's layers. input: the received activations (not the first stage).
  Live forward_chunk(int32_t chunk, models::ChunkBatch batch, bool with_grad, const torch::Tensor& input,
                     bool recompute) {
    Live live;
    live.batch = std::move(batch);
    const ChunkPlace where = place(chunk);
    CF_ASSERT(live.batch.prefix_len == (where.split() ? where.piece * plan_.chunk_size() : 0),
              "chunk batch prefix does not match the plan");
    torch::AutoGradMode grad_mode(with_grad);
    torch::Tensor x;
    if (first_stage_) {
      x = model_->embed(live.batch);
    } else {
      live.input = with_grad ? input.detach().requires_grad_(true) : input;
      x = live.input;
    }
    // Layer recomputation only where nothing reads the chunk's own K/V gradients: a standalone
    // chunk (a split sequence's pieces follow ChunkFlow's resident_chunks scheme instead).
    const bool recompute_layers = recompute_layers_ && with_grad && !where.split();
    x = model_->forward_layers(x, live.batch, state_for(chunk), &live.own_kv, recompute_layers);
    if (!last_stage_) {
      live.output = x;
      return live;
    }
    const torch::Tensor hidden = model_->final_norm(x, live.batch.tokens());
    live.loss = model_->loss_sum(hidden, live.batch.labels, live.batch.labels_checked);
    ++totals.chunk_forwards;
    if (recompute) {
      ++totals.chunk_recomputes;
    } else {
      accumulate(loss_sum_, live.loss);
      totals.loss_tokens += live.batch.loss_tokens();
      const int64_t padding = plan_.chunks().at(static_cast<size_t>(chunk)).padding_tokens;
      CF_ASSERT(padding == 0 || live.batch.context == nullptr, "padded chunks are not split over context ranks");
      totals.real_tokens += live.batch.tokens() - padding;
      measure_far_loss(live.batch, hidden);
    }
    return live;
  }

  void forward(const parallel::PipelineOp& op) {
    models::ChunkBatch batch = batches_(op.chunk);
    torch::Tensor input;
    if (!first_stage_) input = receive(model_->activation_rows(batch.tokens()), pipeline_.stage - 1, kActivationTag);
    Live live = forward_chunk(op.chunk, batch, op.keep_activations, input, false);
    if (!last_stage_) {
      sends_.push_back(pipeline_.group->isend(live.output.detach().contiguous(), pipeline_.stage + 1, kActivationTag));
    }
    if (op.keep_activations) {
      live_.emplace(op.chunk, std::move(live));
    } else {
      // What the recompute right before the backward needs, so that it communicates nothing.
      kept_inputs_.emplace(op.chunk, Kept{std::move(live.batch), input});
    }
  }

  void backward(const parallel::PipelineOp& op) {
    Live live;
    if (op.recompute) {
      auto kept = kept_inputs_.find(op.chunk);
      CF_ASSERT(kept != kept_inputs_.end(), "recompute of chunk ", op.chunk, " before its forward");
      live = forward_chunk(op.chunk, std::move(kept->second.batch), true, kept->second.input, true);
      kept_inputs_.erase(kept);
    } else {
      auto found = live_.find(op.chunk);
      CF_ASSERT(found != live_.end(), "backward of chunk ", op.chunk, " before its forward");
      live = std::move(found->second);
      live_.erase(found);
    }
    std::vector<torch::Tensor> outputs, gradients;
    if (last_stage_) {
      outputs.push_back(live.loss * loss_scale_);
      gradients.push_back(torch::ones_like(outputs.back()));
    } else {
      outputs.push_back(live.output);
      gradients.push_back(receive(live.output.size(0), pipeline_.stage + 1, kActivationGradientTag));
    }
    // The last piece's K/V feeds no later chunk; the others receive what later chunks sent back.
    const ChunkPlace where = place(op.chunk);
    if (where.split() && where.piece + 1 < where.group->chunk_count) {
      const auto accumulated = states_.at(where.group_index).gradients(where.piece * plan_.chunk_size(), plan_.chunk_size());
      // The accumulators are float32; the K/V they belong to are in the activations' dtype.
      for (size_t layer = 0; layer < accumulated.size(); ++layer) {
        outputs.push_back(live.own_kv[layer].k);
        gradients.push_back(accumulated[layer].k.to(live.own_kv[layer].k.scalar_type()));
        outputs.push_back(live.own_kv[layer].v);
        gradients.push_back(accumulated[layer].v.to(live.own_kv[layer].v.scalar_type()));
      }
    }
    // The prefix rows' gradient goes straight into the state's accumulators (attach_prefix).
    torch::autograd::backward(outputs, gradients);
    if (!first_stage_) {
      torch::Tensor input_gradient = live.input.grad();
      if (!input_gradient.defined()) input_gradient = torch::zeros_like(live.input);
      sends_.push_back(pipeline_.group->isend(input_gradient.contiguous(), pipeline_.stage - 1, kActivationGradientTag));
    }
    if (where.split() && where.piece == 0) states_.erase(where.group_index);
  }

  models::CausalLM& model_;
  const PipelineStage& pipeline_;
  bool recompute_layers_;
  const data::ChunkPlan& plan_;
  const ChunkBatchSource& batches_;
  double loss_scale_;
  bool first_stage_ = true, last_stage_ = true;
  double waited_ = 0;
  torch::Tensor loss_sum_, far_loss_sum_;  // float64 on the device, read once in finish()
  std::map<int32_t, KVStateStore> states_;  // by plan group: split sequences in flight
  std::map<int32_t, Live> live_;            // by chunk: forwarded with activations
  struct Kept {
    models::ChunkBatch batch;
    torch::Tensor input;  // undefined on the first stage
  };
  std::map<int32_t, Kept> kept_inputs_;     // by chunk: what the recompute of a chunk needs
  std::deque<std::unique_ptr<parallel::Request>> sends_;
  DeviceBusyTimer busy_timer_;  // totals.busy_seconds: the device's time on this stage's ops
};

}  // namespace

void LossTotals::add(const LossTotals& other) {
  loss_sum += other.loss_sum;
  loss_tokens += other.loss_tokens;
  far_loss_sum += other.far_loss_sum;
  far_tokens += other.far_tokens;
  chunk_forwards += other.chunk_forwards;
  chunk_recomputes += other.chunk_recomputes;
  peak_state_bytes = std::max(peak_state_bytes, other.peak_state_bytes);
  real_tokens += other.real_tokens;
  busy_seconds += other.busy_seconds;
  pipeline_seconds += other.pipeline_seconds;
}

ChunkScheduler::ChunkScheduler(models::CausalLM model, int64_t resident_chunks, PipelineStage pipeline,
                               bool recompute_layers)
    : model_(std::move(model)), resident_chunks_(resident_chunks), pipeline_(pipeline),
      recompute_layers_(recompute_layers) {
  CF_CHECK(resident_chunks_ >= 1, "chunking.resident_chunks must be >= 1, got ", resident_chunks_);
  CF_ASSERT(pipeline_.stage >= 0 && pipeline_.stage < pipeline_.stages, "pipeline stage ", pipeline_.stage, " of ",
            pipeline_.stages);
}

LossTotals ChunkScheduler::run_groups(const data::ChunkPlan& plan, std::span<const int32_t> groups,
                                      const ChunkBatchSource& batches, double loss_scale,
                                      const std::function<void()>& before_last_backward) {
  const auto start = Clock::now();
  const auto schedule =
      parallel::pipeline_schedule(plan, groups, resident_chunks_, pipeline_.stages, pipeline_.extra_in_flight);
  StageRun run(model_, pipeline_, recompute_layers_, plan, batches, loss_scale);
  const std::vector<parallel::PipelineOp>& ops = schedule[static_cast<size_t>(pipeline_.stage)];
  for (size_t i = 0; i < ops.size(); ++i) {
    // The schedule ends with a backward: the one that leaves every gradient final.
    if (i + 1 == ops.size() && before_last_backward) before_last_backward();
    run.run(ops[i]);
  }
  run.finish();
  run.totals.pipeline_seconds = seconds_since(start);
  return run.totals;
}

LossTotals ChunkScheduler::run_group(const data::ChunkPlan& plan, int32_t group, const ChunkBatchSource& batches,
                                     double loss_scale) {
  return run_groups(plan, std::span<const int32_t>(&group, 1), batches, loss_scale);
}

LossTotals ChunkScheduler::run_plan(const data::ChunkPlan& plan, const ChunkBatchSource& batches, double loss_scale) {
  std::vector<int32_t> groups(plan.groups().size());
  for (size_t group = 0; group < groups.size(); ++group) groups[group] = static_cast<int32_t>(group);
  return run_groups(plan, groups, batches, loss_scale);
}

}  // namespace chunkflow::trainer
