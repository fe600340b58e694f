// FLOP counting; see flops.h.
#include "trainer/flops.h"

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

}  // namespace chunkflow::trainer
