// The state-aware chunk scheduler (design brief section 4, the paper's Algorithm 2): runs the
// forward and backward of one chunk group so that parameter gradients equal those of running
// each sequence whole, while at most `resident_chunks` chunks keep activations.
//
// For a split sequence of N dependent chunks and K = resident_chunks:
//   1. forward chunks 0..N-1 in order; each reads the K/V state of its earlier chunks and adds its
//      own; only the last K keep their autograd graph;
//   2. backward the kept chunks from the latest to the earliest;
//   3. for i = N-K-1 down to 0: recompute chunk i's forward with grad and run its backward.
// A chunk's backward injects the K/V gradients that later chunks accumulated for it, and routes
// the gradients of its prefix into the accumulators of the earlier chunks. Descending order makes
// every chunk's K/V gradient complete before it is used.
#pragma once

#include <torch/torch.h>

#include <functional>

#include "data/chunk_plan.h"
#include "models/transformer.h"

namespace chunkflow::trainer {

// Loss figures of the chunks run so far (summed, not yet divided).
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

  void add(const LossTotals& other);
};

// Builds the ChunkBatch of plan chunk `chunk` (token ids, labels, positions, cu_seqlens).
using ChunkBatchSource = std::function<models::ChunkBatch(int32_t chunk)>;

class ChunkScheduler {
 public:
  ChunkScheduler(models::CausalLM model, int64_t resident_chunks);

  // Runs forward and backward of every chunk of plan group `group`, adding the gradient of
  // loss_scale x (summed cross-entropy) into the parameters' .grad. With loss_scale = 1 / (loss
  // tokens of the whole optimizer step) the gradient is independent of chunk_size,
  // resident_chunks, packing and the parallel layout.
  LossTotals run_group(const data::ChunkPlan& plan, int32_t group, const ChunkBatchSource& batches,
                       double loss_scale);

  // All groups of the plan, in order.
  LossTotals run_plan(const data::ChunkPlan& plan, const ChunkBatchSource& batches, double loss_scale);

 private:
  LossTotals run_standalone(const data::ChunkPlan& plan, int32_t chunk, const ChunkBatchSource& batches,
                            double loss_scale);
  LossTotals run_split_sequence(const data::ChunkPlan& plan, const data::ChunkGroup& group,
                                const ChunkBatchSource& batches, double loss_scale);
  void measure_far_loss(const models::ChunkBatch& batch, const torch::Tensor& hidden, int64_t chunk_size,
                        LossTotals* totals);

  models::CausalLM model_;
  int64_t resident_chunks_;
};

}  // namespace chunkflow::trainer
