// Rules of the `optim` section; see optim_config.h.
#include "configs/optim_config.h"

#include "configs/config_error.h"

namespace chunkflow::configs {

// Every comparison is written so that a NaN fails it.
void OptimConfig::validate() const {
  check_field(lr > 0, "optim.lr", "> 0", lr);
  check_field(min_lr >= 0 && min_lr <= lr, "optim.min_lr", "in [0, optim.lr = " + format_value(lr) + "]",
              min_lr);
  check_field(weight_decay >= 0, "optim.weight_decay", ">= 0", weight_decay);
  check_field(beta1 >= 0 && beta1 < 1, "optim.beta1", "in [0, 1)", beta1);
  check_field(beta2 >= 0 && beta2 < 1, "optim.beta2", "in [0, 1)", beta2);
  check_field(eps > 0, "optim.eps", "> 0", eps);
  check_field(warmup_steps >= 0, "optim.warmup_steps", ">= 0", warmup_steps);
  check_one_of("optim.schedule", schedule, {"cosine", "linear", "constant"});
  check_field(max_grad_norm >= 0, "optim.max_grad_norm", ">= 0 (0 disables clipping)",
              max_grad_norm);
  check_field(grad_accumulation >= 1, "optim.grad_accumulation", ">= 1", grad_accumulation);
  check_field(max_skipped_steps >= 0, "optim.max_skipped_steps", ">= 0 (0 = stop at the first non-finite step)",
              max_skipped_steps);
}

}  // namespace chunkflow::configs
