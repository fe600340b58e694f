// Learning-rate schedules; see lr_schedule.h.
#include "trainer/lr_schedule.h"

#include <algorithm>
#include <cmath>

namespace chunkflow::trainer {

double learning_rate(const configs::OptimConfig& optim, int64_t step, int64_t total_steps) {
  if (step < optim.warmup_steps) {
    return optim.lr * static_cast<double>(step + 1) / static_cast<double>(optim.warmup_steps + 1);
  }
  if (optim.schedule == "constant") return optim.lr;
  const int64_t decay_steps = std::max<int64_t>(1, total_steps - 1 - optim.warmup_steps);
  const double progress = std::clamp(static_cast<double>(step - optim.warmup_steps) / static_cast<double>(decay_steps), 0.0, 1.0);
  const double factor = optim.schedule == "linear" ? 1.0 - progress : 0.5 * (1.0 + std::cos(M_PI * progress));
  return optim.min_lr + (optim.lr - optim.min_lr) * factor;
}

}  // namespace chunkflow::trainer
