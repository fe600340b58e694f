// Learning rate per optimizer step: linear warm-up from 0, then cosine, linear or constant decay
// from optim.lr to optim.min_lr at the last step.
#pragma once

#include <cstdint>

#include "configs/optim_config.h"

namespace chunkflow::trainer {

// `step` counts from 0; `total_steps` = run.steps. Warm-up step s (s < warmup) gives
// lr x (s + 1) / (warmup + 1), so the first step already moves the weights.
double learning_rate(const configs::OptimConfig& optim, int64_t step, int64_t total_steps);

}  // namespace chunkflow::trainer
