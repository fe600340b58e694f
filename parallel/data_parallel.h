// Data parallelism on chunk groups: which DP rank runs which group of a chunk plan (balanced by
// a cost model), and the gradient all-reduce that follows the backward.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "data/chunk_plan.h"
#include "parallel/communicator.h"

namespace chunkflow::parallel {

// Cost of a chunk group = per_token x tokens + per_attention_entry x causal score entries
// (prefix included). The trainer derives the coefficients from the model's FLOPs.
struct GroupCostModel {
  double per_token = 1.0;
  double per_attention_entry = 0.0;
  double cost(const data::ChunkGroup& group) const;
  // The same for one chunk of a plan (its segments' tokens and causal entries, prefix included).
  double chunk_cost(const data::ChunkPlan& plan, int32_t chunk) const;
};

// Calibrates the cost model from measurement. Each observation is the work one rank did in a
// step (tokens, causal score entries) and the seconds it computed; the coefficients are the least-
// squares fit through the origin, older steps weighing less (exponential forgetting). While the
// observations cannot separate the two terms (too few, or every rank doing the same mix), or the
// fit gives a term that is not positive, the prior model's ratio is kept and only its scale fitted.
class CostCalibration {
 public:
  explicit CostCalibration(GroupCostModel prior, double forgetting = 0.9);

  // One observation as statistics (6 float64 values): summing them over ranks (all-reduce)
  // pools every rank's observation of a step.
  static torch::Tensor observation(double tokens, double attention_entries, double seconds);
  // Multiplies every earlier observation's weight by the forgetting factor, then adds `statistics`
  // (one step's observations, pooled).
  void add_step(const torch::Tensor& statistics);

  // Seconds per token and per score entry; the prior until there is an observation.
  GroupCostModel model() const;
  bool calibrated() const;  // both terms fitted from measurement

 private:
  GroupCostModel prior_;
  double forgetting_;
  // Weighted sums of t*t, t*e, e*e, t*y, e*y and the observation weight.
  double tt_ = 0, te_ = 0, ee_ = 0, ty_ = 0, ey_ = 0, weight_ = 0;
};

struct DpAssignment {
  std::vector<std::vector<int32_t>> groups_of_rank;  // [dp][groups], each in plan order
  std::vector<double> cost_of_rank;                  // [dp]
  double max_cost() const;
  double mean_cost() const;
  // max / mean (1.0 = perfect balance; 1.0 also when there is no work).
  double imbalance() const;
};

// Greedy longest-processing-time-first: groups by cost, largest first, each to the rank with
// the least cost so far (ties: lowest rank). Deterministic, so every rank computes the same
// assignment without communicating. A split sequence's chunks stay on one rank.
DpAssignment balance_chunk_groups(const data::ChunkPlan& plan, int dp, const GroupCostModel& cost_model);

// Sums the gradients of `parameters` over `group` in place, flattened into buckets of at most
// `bucket_bytes` (one all-reduce per bucket). Parameters without a gradient contribute zeros
// (a rank may have received no work). Collective over `group`.
void all_reduce_gradients(const std::vector<torch::Tensor>& parameters, Communicator& group,
                          int64_t bucket_bytes = int64_t{25} << 20);

// The same all-reduce, overlapped with the step's last backward. Buckets follow the reverse
// parameter order (the order the backward finishes gradients in). After arm(), a hook on every
// parameter copies its final gradient (what earlier backwards accumulated plus this backward's
// part) into its bucket; a bucket whose gradients are all final starts a non-blocking all-reduce
// while the backward goes on. finish() starts the remaining buckets, waits, and writes the sums
// into .grad. Buckets always start in index order, so every rank issues the same sequence of
// collectives whatever its own backward did (a rank with no work arms nothing).
class GradientReducer {
 public:
  // with_hooks = false: no hooks are registered and arm() must not be called (a plain bucketed
  // all-reduce, what all_reduce_gradients does).
  GradientReducer(std::vector<torch::Tensor> parameters, Communicator& group, int64_t bucket_bytes,
                  bool with_hooks = true);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // The next backward on this rank is the step's last: its gradients are final.
  void arm();
  // Collective over the group: completes the sums (and disarms).
  void finish();
  // Buckets that started during the backward before the last finish() (0 if it was not armed).
  int64_t overlapped_buckets() const { return overlapped_in_last_finish_; }
  size_t bucket_count() const { return buckets_.size(); }

 private:
  struct Bucket {
    std::vector<size_t> parameters;  // indices into parameters_
    std::vector<int64_t> offsets;    // of each parameter in `flat`
    torch::Tensor flat;
    size_t final_gradients = 0;
    std::unique_ptr<Request> request;
  };
  void on_gradient(size_t parameter, const torch::Tensor& gradient);
  void start_ready_buckets();
  void start(Bucket& bucket);

  std::vector<torch::Tensor> parameters_;
  Communicator& group_;
  std::vector<Bucket> buckets_;
  std::vector<std::pair<size_t, size_t>> place_;  // parameter -> (bucket, slot)
  std::vector<unsigned> hooks_;
  size_t next_bucket_ = 0;  // buckets start in order
  bool armed_ = false;
  int64_t overlapped_buckets_ = 0, overlapped_in_last_finish_ = 0;
};

}  // namespace chunkflow::parallel
