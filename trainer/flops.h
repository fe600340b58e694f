// Model FLOPs by Megatron's convention (design brief section 10): linear layers on real tokens,
// attention as the sum over original sequences of L^2 / 2 score entries; training = 3 x forward
// (backward counts twice the forward). Recomputation is not counted: these are model FLOPs, so
// TFLOP/s compares across schedules.
#pragma once

#include <cstdint>
#include <vector>

#include "configs/model_config.h"

namespace chunkflow::trainer {

// Forward FLOPs of the linear layers (projections, MLP, LM head) per token.
double linear_flops_per_token(const configs::ModelConfig& model);

// Training FLOPs of one step over sequences of these lengths.
double training_flops(const configs::ModelConfig& model, const std::vector<int64_t>& sequence_lengths);

}  // namespace chunkflow::trainer
