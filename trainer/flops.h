// Model FLOPs by Megatron's convention (design brief section 10): linear layers on real tokens,
// attention as the sum over original sequences of L^2 / 2 score entries; training = 3 x forward
// (backward counts twice the forward). Recomputation is not counted: these are model FLOPs, so
// TFLOP/s compares across schedules.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "configs/model_config.h"
#include "data/chunk_plan.h"
#include "parallel/data_parallel.h"
#include "parallel/pipeline_schedule.h"

namespace chunkflow::trainer {

// Forward FLOPs of the linear layers (projections, MLP, LM head) per token.
double linear_flops_per_token(const configs::ModelConfig& model);

// Training FLOPs of one step over sequences of these lengths.
double training_flops(const configs::ModelConfig& model, const std::vector<int64_t>& sequence_lengths);

// The DP cost model from FLOPs: linear layers per token, attention per causal score entry (the
// calibration's prior).
parallel::GroupCostModel flop_cost_model(const configs::ModelConfig& model);

// Duration of a pipeline op on a stage under `cost_model` (per chunk): the stage's layers' share
// of the per-layer work, plus the LM head (its FLOP share of the per-token term) on the last
// stage; a backward costs two forwards, a recomputing one three. For simulate_pipeline.
std::function<double(int, const parallel::PipelineOp&)> pipeline_op_cost(const configs::ModelConfig& model,
                                                                       const parallel::GroupCostModel& cost_model,
                                                                       const data::ChunkPlan& plan, int stages);

}  // namespace chunkflow::trainer
