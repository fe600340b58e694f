// State-aware 1F1B schedule and its simulator; see pipeline_schedule.h.
#include "parallel/pipeline_schedule.h"

#include <algorithm>
#include <map>
#include <utility>

#include "core/error.h"

namespace chunkflow::parallel {

std::vector<std::vector<PipelineOp>> pipeline_schedule(const data::ChunkPlan& plan, std::span<const int32_t> groups,
                                                       int64_t resident_chunks, int stages) {
  CF_ASSERT(stages >= 1 && resident_chunks >= 1, "stages ", stages, ", resident_chunks ", resident_chunks);
  // The forward order and the backward order, shared by every stage.
  std::vector<PipelineOp> forwards, backwards;
  // needed_forwards[b]: forwards that must have run before backward b can (monotone).
  std::vector<size_t> needed_forwards;
  for (const int32_t group_index : groups) {
    const data::ChunkGroup& group = plan.groups().at(static_cast<size_t>(group_index));
    const int64_t pieces = group.chunk_count;
    const int64_t first_kept = group.split_sequence < 0 ? 0 : std::max<int64_t>(0, pieces - resident_chunks);
    for (int64_t piece = 0; piece < pieces; ++piece) {
      PipelineOp op;
      op.kind = PipelineOp::Kind::kForward;
      op.chunk = group.first_chunk + static_cast<int32_t>(piece);
      op.group = group_index;
      op.keep_activations = piece >= first_kept;
      forwards.push_back(op);
    }
    for (int64_t piece = pieces - 1; piece >= 0; --piece) {
      PipelineOp op;
      op.kind = PipelineOp::Kind::kBackward;
      op.chunk = group.first_chunk + static_cast<int32_t>(piece);
      op.group = group_index;
      op.recompute = piece < first_kept;
      backwards.push_back(op);
      // A split sequence's backwards start after all of its forwards.
      needed_forwards.push_back(forwards.size());
    }
  }

  std::vector<std::vector<PipelineOp>> schedule(static_cast<size_t>(stages));
  for (int stage = 0; stage < stages; ++stage) {
    const size_t in_flight_limit = static_cast<size_t>(stages - stage);
    std::vector<PipelineOp>& ops = schedule[static_cast<size_t>(stage)];
    size_t forwarded = 0, backwarded = 0;
    while (backwarded < backwards.size()) {
      const bool backward_ready = needed_forwards[backwarded] <= forwarded;
      const bool forward_allowed = forwarded < forwards.size() && forwarded - backwarded < in_flight_limit;
      if (backward_ready && !forward_allowed) {
        ops.push_back(backwards[backwarded++]);
      } else {
        CF_ASSERT(forwarded < forwards.size(), "pipeline schedule: backward waits for a forward that does not exist");
        ops.push_back(forwards[forwarded++]);
      }
    }
  }
  return schedule;
}

PipelineSimulation simulate_pipeline(const std::vector<std::vector<PipelineOp>>& schedule,
                                     const std::function<double(int, const PipelineOp&)>& op_seconds) {
  const int stages = static_cast<int>(schedule.size());
  PipelineSimulation result;
  result.busy_seconds.assign(static_cast<size_t>(stages), 0.0);
  std::vector<size_t> next(static_cast<size_t>(stages), 0);
  std::vector<double> free_at(static_cast<size_t>(stages), 0.0);
  // Finish time of (stage, kind, chunk).
  std::map<std::tuple<int, PipelineOp::Kind, int32_t>, double> finished;
  size_t remaining = 0;
  for (const auto& ops : schedule) remaining += ops.size();
  while (remaining > 0) {
    bool progressed = false;
    for (int stage = 0; stage < stages; ++stage) {
      const auto& ops = schedule[static_cast<size_t>(stage)];
      size_t& position = next[static_cast<size_t>(stage)];
      // Run this stage's ops for as long as their inputs exist.
      while (position < ops.size()) {
        const PipelineOp& op = ops[position];
        const bool forward = op.kind == PipelineOp::Kind::kForward;
        const int source = forward ? stage - 1 : stage + 1;
        double ready = free_at[static_cast<size_t>(stage)];
        if (source >= 0 && source < stages) {
          const auto input = finished.find({source, op.kind, op.chunk});
          if (input == finished.end()) break;
          ready = std::max(ready, input->second);
        }
        const double seconds = op_seconds(stage, op);
        free_at[static_cast<size_t>(stage)] = ready + seconds;
        result.busy_seconds[static_cast<size_t>(stage)] += seconds;
        finished[{stage, op.kind, op.chunk}] = ready + seconds;
        ++position;
        --remaining;
        progressed = true;
      }
    }
    if (!progressed) {
      std::string waiting;
      for (int stage = 0; stage < stages; ++stage) {
        const size_t position = next[static_cast<size_t>(stage)];
        if (position >= schedule[static_cast<size_t>(stage)].size()) continue;
        const PipelineOp& op = schedule[static_cast<size_t>(stage)][position];
        waiting += " stage " + std::to_string(stage) + (op.kind == PipelineOp::Kind::kForward ? " forward" : " backward") +
                   " of chunk " + std::to_string(op.chunk) + ";";
      }
      CF_FAIL("pipeline schedule deadlocks:", waiting);
    }
  }
  result.step_seconds = *std::max_element(free_at.begin(), free_at.end());
  double busy = 0;
  for (const double seconds : result.busy_seconds) busy += seconds;
  result.bubble_ratio = result.step_seconds > 0 ? 1.0 - busy / (stages * result.step_seconds) : 0.0;
  return result;
}

}  // namespace chunkflow::parallel
