// The state-aware chunk scheduler (design brief section 4, the paper's Algorithm 2), on one
// pipeline stage or many: runs the forward and backward of chunk groups so that parameter
// gradients equal those of running each sequence whole, while at most `resident_chunks` chunks
// of a split sequence keep activations.
//
// For a split sequence of N dependent chunks and K = resident_chunks:
//   1. forward chunks 0..N-1 in order; each reads the K/V state of its earlier chunks and adds its
//      own; only the last K keep their autograd graph;
//   2. backward the kept chunks from the latest to the earliest;
//   3. for i = N-K-1 down to 0: recompute chunk i's forward with grad and run its backward.
// A chunk's backward injects the K/V gradients that later chunks accumulated for it, and routes
// the gradients of its prefix into the accumulators of the earlier chunks. Descending order makes
// every chunk's K/V gradient complete before it is used.
//
// With pipeline parallelism each stage runs its own layers in the order parallel::
// pipeline_schedule gives (state-aware 1F1B), keeps the K/V state of its own layers, receives
// activations from the previous stage and activation gradients from the next one, and keeps the
// input of every chunk it forwarded without activations so that its recompute needs no
// communication. With one stage the schedule is exactly steps 1-3 above, group after group.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <span>

#include "data/chunk_plan.h"
#include "models/transformer.h"
#include "parallel/communicator.h"
#include "trainer/trace.h"

namespace chunkflow::trainer {

// Loss figures of the chunks run so far (summed, not yet divided). Under pipeline parallelism
// only the last stage counts chunks, tokens and losses (the other stages report zeros); every
// stage reports its own peak K/V state and times.
struct LossTotals {
  double loss_sum = 0;       // summed token cross-entropy over labelled tokens
  int64_t loss_tokens = 0;
  // Labelled tokens whose target lies beyond the first chunk of their sequence (position + 1 >=
  // chunk_size): their loss can only fall if attention reaches across chunks.
  double far_loss_sum = 0;
  int64_t far_tokens = 0;
  int64_t chunk_forwards = 0;    // every chunk forward, recomputes included
  int64_t chunk_recomputes = 0;
  int64_t peak_state_bytes = 0;  // largest K/V state (+ gradient accumulators) held at once
  int64_t real_tokens = 0;
  double busy_seconds = 0;       // device time of the ops, waits for other stages excluded (cp collectives
                                 // count as busy); CUDA events on a GPU (DeviceBusyTimer)
  double pipeline_seconds = 0;   // wall time of the schedule, waits included

  void add(const LossTotals& other);
};

// Builds the ChunkBatch of plan chunk `chunk` (token ids, labels, positions, cu_seqlens; the
// context-parallel shard of this rank when cp > 1).
using ChunkBatchSource = std::function<models::ChunkBatch(int32_t chunk)>;

// This rank's place in the pipeline. `group` is the pp process group (rank == stage); it may be
// null with one stage.
struct PipelineStage {
  int stage = 0;
  int stages = 1;
  parallel::Communicator* group = nullptr;
  int64_t extra_in_flight = 0;  // parallel.pipeline_extra_in_flight
  TraceRecorder* trace = nullptr;  // logging.trace: every forward/backward and wait becomes a span
};

class ChunkScheduler {
 public:
  // `model` holds this stage's part (models::pipeline_stage). recompute_layers: standalone chunks
  // keep only each layer's input and recompute the layer in their backward (chunking.
  // recompute_layers, Megatron's full activation recomputation); gradients are unchanged.
  ChunkScheduler(models::CausalLM model, int64_t resident_chunks, PipelineStage pipeline = {},
                 bool recompute_layers = false);

  // Runs forward and backward of every chunk of the plan groups `groups` (in that order), adding
  // the gradient of loss_scale x (summed cross-entropy) into the parameters' .grad. With
  // loss_scale = 1 / (loss tokens of the whole optimizer step) the gradient is independent of
  // chunk_size, resident_chunks, packing and the parallel layout. Every stage of a pipeline must
  // call it with the same plan and groups.
  // before_last_backward, if set, runs right before this stage's last backward of the call
  // (the gradient reducer arms its hooks there to overlap the all-reduce with that backward); it
  // never runs when `groups` is empty.
  LossTotals run_groups(const data::ChunkPlan& plan, std::span<const int32_t> groups, const ChunkBatchSource& batches,
                        double loss_scale, const std::function<void()>& before_last_backward = {});
  LossTotals run_group(const data::ChunkPlan& plan, int32_t group, const ChunkBatchSource& batches,
                       double loss_scale);
  // All groups of the plan, in order.
  LossTotals run_plan(const data::ChunkPlan& plan, const ChunkBatchSource& batches, double loss_scale);

 private:
  models::CausalLM model_;
  int64_t resident_chunks_;
  PipelineStage pipeline_;
  bool recompute_layers_;
};

}  // namespace chunkflow::trainer
