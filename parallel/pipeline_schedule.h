// Pipeline parallelism (design brief section 7): the schedule of chunk forwards and backwards on
// every stage, and a simulator that predicts step time and bubble ratio from per-op costs. The
// same generator drives the runtime (trainer/chunk_scheduler.h), so the simulation describes
// exactly what runs.
//
// Chunks are the micro-batches of a 1F1B schedule made state-aware:
//   - forwards run in plan order (a split sequence's dependent chunks in order, each stage
//     keeping the K/V state of its own layers); the first N - K chunks of a split sequence of N
//     chunks forward without keeping activations (K = resident_chunks);
//   - backwards run group by group, a split sequence's chunks in reverse; a chunk forwarded
//     without activations is recomputed right before its backward, from the stage input the
//     stage kept;
//   - stage s keeps at most `stages - s + extra_in_flight` chunks in flight (forwarded, not yet
//     backwarded) while the next backward can run; it forwards further only while the next
//     backward still waits for its chunk's forward (a split sequence's first backward needs all its
//     forwards). extra_in_flight = 0 is 1F1B's memory bound; more lets stages forward later chunks
//     while a split sequence's backwards are still on their way, at the cost of their activations.
//
// Deadlock freedom: every stage runs the same forward order and the same backward order, and a
// later stage never runs more forwards before a given backward than an earlier stage does (the
// in-flight limits do not grow with the stage index).
// With non-blocking sends, every receive then has its matching send issued or issuable; the
// simulator checks this on any schedule it runs (tests run it on adversarial plans).
#pragma once

#include <functional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "data/chunk_plan.h"

namespace chunkflow::parallel {

struct PipelineOp {
  enum class Kind : uint8_t { kForward, kBackward };
  Kind kind = Kind::kForward;
  int32_t chunk = 0;          // plan chunk
  int32_t group = 0;          // plan chunk group
  bool keep_activations = false;  // forward: keep the graph for the backward
  bool recompute = false;         // backward: forward again first (activations were not kept)
  bool operator==(const PipelineOp&) const = default;
};

// ops[stage]: what stage `stage` runs, in order, for the chunk groups `groups` of `plan` (in the
// given order). Every stage runs every chunk's forward and backward exactly once.
std::vector<std::vector<PipelineOp>> pipeline_schedule(const data::ChunkPlan& plan, std::span<const int32_t> groups,
                                                       int64_t resident_chunks, int stages,
                                                       int64_t extra_in_flight = 0);

struct PipelineSimulation {
  double step_seconds = 0;             // when the last stage finishes its last op
  std::vector<double> busy_seconds;    // [stages]: time spent computing
  double bubble_ratio = 0;             // 1 - total busy / (stages x step time)
  // [stages][ops]: when each op of the schedule starts and ends.
  std::vector<std::vector<std::pair<double, double>>> op_times;
};

// Simulates `schedule`: a forward on stage s starts when stage s is free and stage s-1 has
// finished that chunk's forward; a backward when stage s+1 has finished that chunk's backward.
// Communication is free and sends never block. op_seconds(stage, op) gives each op's duration
// (a recomputing backward's cost includes the recompute). Throws core::Error if the schedule
// deadlocks (no stage can run its next op).
PipelineSimulation simulate_pipeline(const std::vector<std::vector<PipelineOp>>& schedule,
                                     const std::function<double(int, const PipelineOp&)>& op_seconds);

// A Gantt chart of a simulated schedule as a standalone SVG document: one row per stage,
// forwards light, backwards dark, recomputing backwards orange, each labelled with its chunk;
// idle time stays blank.
std::string pipeline_timeline_svg(const std::vector<std::vector<PipelineOp>>& schedule,
                                  const PipelineSimulation& simulation, const std::string& title);

}  // namespace chunkflow::parallel
