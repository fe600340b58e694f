// The `parallel` section: the dp x cp x pp x tp mesh, its rank order and the communication backend.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace chunkflow::configs {

struct ParallelConfig {
  static constexpr const char* kSection = "parallel";

  int64_t dp = 1;
  int64_t cp = 1;
  int64_t pp = 1;
  int64_t tp = 1;
  // With tp > 1: the residual stream split by rows over the tp ranks between the split blocks
  // (Megatron's sequence parallelism, models/tensor_parallel.h).
  bool sequence_parallel = true;
  std::string order = "dp,cp,pp";
  std::string backend = "auto";
  // Gradient all-reduce over the dp x cp ranks of a stage: flattened buckets of this many MiB,
  // started during the step's last backward as their gradients become final (overlap) or after it.
  double gradient_bucket_mb = 25.0;
  bool overlap_gradient_reduce = true;
  // ZeRO-1 (parallel/sharded_optimizer.h): the AdamW moments sharded over a stage's dp x cp ranks,
  // gradients reduce-scattered instead of all-reduced (no overlap with the backward then).
  bool shard_optimizer = false;
  // Balance DP ranks with the cost model fitted to measured compute times (true), or with the
  // fixed FLOP model (false: the assignment, hence fp32 summation order, is then reproducible
  // bit for bit from run to run).
  bool calibrate_costs = true;
  // Pipeline: chunks a stage may keep in flight beyond 1F1B's `pp - stage` (parallel/
  // pipeline_schedule.h); fills the waits around split sequences at the cost of activations.
  int64_t pipeline_extra_in_flight = 0;

  template <typename Visitor>
  void visit_fields(Visitor&& visit) { fields(*this, visit); }
  template <typename Visitor>
  void visit_fields(Visitor&& visit) const { fields(*this, visit); }

  // Throws ConfigError naming parallel.<key> when a rule is broken.
  void validate() const;

  // dp x cp x pp x tp.
  int64_t world_size() const { return dp * cp * pp * tp; }

  // The axes of `order`, outermost first, always ending with all four, e.g. {"dp", "cp", "pp",
  // "tp"}: tp, when `order` leaves it out, is the innermost axis (tp ranks on consecutive ranks,
  // hence on one machine, as its two sums per layer want). Throws ConfigError naming
  // parallel.order unless it names dp, cp and pp once each, and tp at most once (spaces around
  // names are allowed).
  std::vector<std::string> axis_order() const;

  // Throws ConfigError naming every degree unless world_size() == `world` (the job's rank count):
  // "parallel: dp (2) x cp (1) x pp (4) x tp (1) = 8 ranks, but the job has 6 ranks; ...".
  void check_world(int64_t world) const;

  bool operator==(const ParallelConfig&) const = default;

 private:
  template <typename Self, typename Visitor>
  static void fields(Self& self, Visitor& visit) {
    visit("dp", self.dp, "data-parallel degree");
    visit("cp", self.cp, "context-parallel degree (splits each chunk's tokens)");
    visit("pp", self.pp, "pipeline-parallel degree (stages of contiguous layers)");
    visit("tp", self.tp, "tensor-parallel degree (splits every layer's heads and MLP, and the vocabulary)");
    visit("sequence_parallel", self.sequence_parallel,
          "with tp > 1: split norms and residuals by tokens over the tp ranks (all-gather / reduce-scatter)");
    visit("order", self.order, "rank layout, outermost axis first: a permutation of dp,cp,pp (tp innermost unless named)");
    visit("backend", self.backend, "auto | mpi | nccl");
    visit("gradient_bucket_mb", self.gradient_bucket_mb, "gradient all-reduce bucket size in MiB");
    visit("overlap_gradient_reduce", self.overlap_gradient_reduce,
          "start bucket all-reduces during the step's last backward");
    visit("shard_optimizer", self.shard_optimizer,
          "shard the AdamW moments over each stage's dp x cp ranks (ZeRO-1); gradients reduce-scattered");
    visit("calibrate_costs", self.calibrate_costs, "balance DP ranks by measured compute times (else by FLOPs)");
    visit("pipeline_extra_in_flight", self.pipeline_extra_in_flight,
          "chunks a pipeline stage may keep in flight beyond 1F1B's pp - stage");
  }
};

}  // namespace chunkflow::configs
