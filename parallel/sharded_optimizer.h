// ZeRO-1 (Megatron-LM's distributed optimizer): the AdamW moments of a pipeline stage are sharded
// over the ranks that hold the stage (its dp x cp ranks), so each keeps 1/size of them.
//
//   parameters of a group, flattened in order and cut into buckets (each padded to a multiple
//   of the group size):   | bucket 0                  | bucket 1        |
//   rank r owns slice r:  | r0 | r1 | r2 |            | r0 | r1 | r2 |
//
// A step: every bucket's gradient is summed over the group by a reduce-scatter (each rank gets
// the sum of its slice only, half the traffic of an all-reduce), AdamW updates this rank's slices
// of the float32 master weights, and an all-gather gives every rank the whole updated parameters.
// AdamW is element-wise, so the update equals replicated AdamW's on the summed gradients.
//
// What stays whole on every rank: the float32 parameters (the layers compute from them) and their
// .grad. What is sharded: exp_avg and exp_avg_sq (8 of the 16 bytes per parameter of replicated
// mixed-precision training).
#pragma once

#include <torch/optim/adamw.h>

#include <functional>
#include <memory>
#include <vector>

#include "parallel/communicator.h"

namespace chunkflow::parallel {

class ShardedAdamW {
 public:
  // Builds the AdamW that updates the slices: the caller's choice (torch's or a fused one), given
  // one group per input group with that group's options.
  using MakeAdamW =
      std::function<std::unique_ptr<torch::optim::AdamW>(std::vector<torch::optim::OptimizerParamGroup>)>;

  // `groups`: the stage's float32 parameters (contiguous, one device) by optimizer group, each
  // with its AdamW options. Buckets hold at most `bucket_bytes` of one group's parameters (a
  // larger parameter gets a bucket of its own). Collective over `group` only in the calls below.
  ShardedAdamW(const std::vector<torch::optim::OptimizerParamGroup>& groups, Communicator& group,
               const MakeAdamW& make_adamw, int64_t bucket_bytes = int64_t{25} << 20);

  // Collective: sums every parameter's .grad over the group and keeps this rank's slices of the
  // sums (parameters without .grad count as zeros). The parameters' own .grad are left as they were
  // (this rank's partial sums).
  void reduce_scatter_gradients();
  // Sum of squares of this rank's gradient slices, in float64, counting only the parameters for
  // which `counted(parameter index)` is true (all when empty). Summed over the group (and the
  // pipeline) it is the squared norm of the whole gradient. Local.
  double gradient_square_sum(const std::function<bool(size_t)>& counted = {}) const;
  // Multiplies this rank's gradient slices by `factor` (gradient clipping). Local.
  void scale_gradients(double factor);
  // Collective: one AdamW update of this rank's slices (from the parameters' current values),
  // then every rank's updated slices all-gathered into the parameters.
  void step();

  // The AdamW over this rank's slices (its param_groups carry the learning rate).
  torch::optim::AdamW& adamw() { return *adamw_; }
  // The parameters in the order of the groups given (the index `counted` receives).
  const std::vector<torch::Tensor>& parameters() const { return parameters_; }

  // Checkpoints stay layout-free: whole per-parameter AdamW state, keyed like
  // torch::optim::AdamW::state() (by the parameter's TensorImpl), for the parameters given.
  // Collective (all-gathers the moments bucket by bucket); empty before the first step. Ranks
  // passing keep = false take part in the gathers but keep nothing (an empty map): the whole
  // moments then never sit on them, only one bucket at a time.
  using FullState = ska::flat_hash_map<void*, std::unique_ptr<torch::optim::OptimizerParamState>>;
  FullState gather_state(bool keep = true) const;
  // Keeps this rank's slices of `state` (whole per-parameter AdamW state as gather_state returns
  // and torch::optim::AdamW holds; every parameter or none). Local.
  void load_state(const FullState& state);

 private:
  struct Bucket {
    size_t group = 0;                 // optimizer group
    std::vector<size_t> parameters;   // indices into parameters_
    std::vector<int64_t> offsets;     // each parameter's first element in the bucket's flat layout
    int64_t padded_numel = 0;         // a multiple of the group size
    torch::Tensor slice;              // [padded_numel / size]: this rank's master weights (AdamW's parameter)
  };
  // Calls visit(parameter index, first element in the parameter, first element in the slice,
  // count) for every piece of a parameter inside this rank's slice of `bucket`.
  void for_each_piece(const Bucket& bucket,
                      const std::function<void(size_t, int64_t, int64_t, int64_t)>& visit) const;
  void refresh_slices();

  Communicator& group_;
  std::vector<torch::Tensor> parameters_;
  std::vector<Bucket> buckets_;
  std::unique_ptr<torch::optim::AdamW> adamw_;
};

}  // namespace chunkflow::parallel
