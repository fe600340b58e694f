// FLOP counting; see flops.h.
#include "trainer/flops.h"

#include "models/transformer.h"

namespace chunkflow::trainer {

double linear_flops_per_token(const configs::ModelConfig& model) {
  const double hidden = static_cast<double>(model.hidden_size);
  const double head_dim = static_cast<double>(model.effective_head_dim());
  const double q_width = static_cast<double>(model.num_attention_heads) * head_dim;
  const double kv_width = static_cast<double>(model.num_key_value_heads) * head_dim;
  const double attention_weights = hidden * q_width + 2 * hidden * kv_width + q_width * hidden;
  const double mlp_weights = 3 * hidden * static_cast<double>(model.intermediate_size);
  const double layers = static_cast<double>(model.num_hidden_layers);
  const double head = hidden * static_cast<double>(model.vocab_size);
  return 2.0 * (layers * (attention_weights + mlp_weights) + head);
}

double training_flops(const configs::ModelConfig& model, const std::vector<int64_t>& sequence_lengths) {
  const double per_token = linear_flops_per_token(model);
  const double score_width = static_cast<double>(model.num_attention_heads * model.effective_head_dim());
  double forward = 0;
  for (const int64_t length : sequence_lengths) {
    const double l = static_cast<double>(length);
    // Q K^T and P V: 2 matmuls x 2 FLOPs per multiply-add over L^2 / 2 causal entries.
    forward += per_token * l + static_cast<double>(model.num_hidden_layers) * 2.0 * 2.0 * score_width * l * l / 2.0;
  }
  return 3.0 * forward;
}

parallel::GroupCostModel flop_cost_model(const configs::ModelConfig& model) {
  parallel::GroupCostModel cost;
  cost.per_token = linear_flops_per_token(model);
  cost.per_attention_entry =
      4.0 * static_cast<double>(model.num_hidden_layers * model.num_attention_heads * model.effective_head_dim());
  return cost;
}

std::function<double(int, const parallel::PipelineOp&)> pipeline_op_cost(const configs::ModelConfig& model,
                                                                       const parallel::GroupCostModel& cost_model,
                                                                       const data::ChunkPlan& plan, int stages) {
  const double layers = static_cast<double>(model.num_hidden_layers);
  const double head_share = 2.0 * static_cast<double>(model.hidden_size * model.vocab_size) / linear_flops_per_token(model);
  std::vector<double> layer_share(static_cast<size_t>(stages));
  for (int s = 0; s < stages; ++s) {
    const models::ModelStage part = models::pipeline_stage(model, s, stages);
    layer_share[static_cast<size_t>(s)] = static_cast<double>(part.end_layer - part.first_layer) / layers;
  }
  return [&plan, cost_model, head_share, layer_share, stages](int stage, const parallel::PipelineOp& op) {
    const data::Chunk& chunk = plan.chunks()[static_cast<size_t>(op.chunk)];
    const double token_part = cost_model.per_token * static_cast<double>(chunk.tokens);
    const double attention_part = cost_model.chunk_cost(plan, op.chunk) - token_part;
    const double share = layer_share[static_cast<size_t>(stage)];
    const double forward =
        token_part * ((1.0 - head_share) * share + (stage == stages - 1 ? head_share : 0.0)) + attention_part * share;
    if (op.kind == parallel::PipelineOp::Kind::kForward) return forward;
    return (op.recompute ? 3.0 : 2.0) * forward;
  };
}

}  // namespace chunkflow::trainer
