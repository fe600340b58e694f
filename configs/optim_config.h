// The `optim` section: AdamW, the learning-rate schedule, clipping and gradient accumulation.
#pragma once

#include <cstdint>
#include <string>

namespace chunkflow::configs {

struct OptimConfig {
  static constexpr const char* kSection = "optim";

  double lr = 3e-4;
  double min_lr = 3e-5;
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  int64_t warmup_steps = 10;
  std::string schedule = "cosine";
  double max_grad_norm = 1.0;  // 0 disables clipping
  int64_t grad_accumulation = 1;
  // Consecutive steps with a non-finite loss or gradient norm that are skipped (no update) before
  // the run stops with diagnostics; 0 stops at the first.
  int64_t max_skipped_steps = 3;
  bool fused = true;

  template <typename Visitor>
  void visit_fields(Visitor&& visit) { fields(*this, visit); }
  template <typename Visitor>
  void visit_fields(Visitor&& visit) const { fields(*this, visit); }

  // Throws ConfigError naming optim.<key> when a rule is broken.
  void validate() const;

  bool operator==(const OptimConfig&) const = default;

 private:
  template <typename Self, typename Visitor>
  static void fields(Self& self, Visitor& visit) {
    visit("lr", self.lr, "peak learning rate (after warmup)");
    visit("min_lr", self.min_lr, "final learning rate of the cosine / linear decay");
    visit("weight_decay", self.weight_decay, "AdamW decoupled weight decay");
    visit("beta1", self.beta1, "AdamW first-moment decay");
    visit("beta2", self.beta2, "AdamW second-moment decay");
    visit("eps", self.eps, "AdamW denominator epsilon");
    visit("warmup_steps", self.warmup_steps, "linear warmup steps from 0 to lr");
    visit("schedule", self.schedule, "cosine | linear | constant (after warmup)");
    visit("max_grad_norm", self.max_grad_norm, "global gradient-norm clip; 0 disables clipping");
    visit("grad_accumulation", self.grad_accumulation, "global batches per optimizer step");
    visit("max_skipped_steps", self.max_skipped_steps,
          "consecutive non-finite steps skipped before the run stops; 0 = stop at the first");
    visit("fused", self.fused, "AdamW as one multi-tensor kernel per group (false: per-tensor operators)");
  }
};

}  // namespace chunkflow::configs
