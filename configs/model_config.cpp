// Rules of the `model` section; see model_config.h.
#include "configs/model_config.h"

#include "configs/config_error.h"
#include "core/error.h"

namespace chunkflow::configs {

int64_t ModelConfig::effective_head_dim() const {
  if (head_dim != 0) return head_dim;
  return num_attention_heads > 0 ? hidden_size / num_attention_heads : 0;
}

void ModelConfig::validate() const {
  check_one_of("model.family", family, {"llama", "qwen2"});
  check_field(vocab_size > 0, "model.vocab_size", "> 0", vocab_size);
  check_field(hidden_size > 0, "model.hidden_size", "> 0", hidden_size);
  check_field(intermediate_size > 0, "model.intermediate_size", "> 0", intermediate_size);
  check_field(num_hidden_layers > 0, "model.num_hidden_layers", "> 0", num_hidden_layers);
  check_field(num_attention_heads > 0, "model.num_attention_heads", "> 0", num_attention_heads);
  check_field(num_key_value_heads > 0, "model.num_key_value_heads", "> 0", num_key_value_heads);
  if (num_attention_heads % num_key_value_heads != 0) {
    throw ConfigError(
        std::vector<std::string>{"model.num_key_value_heads", "model.num_attention_heads"},
        core::str_cat("model.num_key_value_heads must divide model.num_attention_heads (",
                      num_attention_heads, "), got ", num_key_value_heads,
                      "; each K/V head serves a whole group of query heads"));
  }
  check_field(head_dim >= 0, "model.head_dim", ">= 0 (0 = hidden_size / num_attention_heads)",
              head_dim);
  if (head_dim == 0 && hidden_size % num_attention_heads != 0) {
    throw ConfigError(
        std::vector<std::string>{"model.hidden_size", "model.num_attention_heads", "model.head_dim"},
        core::str_cat("model.hidden_size must be a multiple of model.num_attention_heads (",
                      num_attention_heads, ") when model.head_dim is 0, got ", hidden_size,
                      "; set model.head_dim explicitly"));
  }
  const int64_t rotary_dim = effective_head_dim();
  if (rotary_dim % 2 != 0) {
    throw ConfigError(
        std::vector<std::string>{head_dim != 0 ? "model.head_dim" : "model.hidden_size"},
        core::str_cat("model.head_dim must be even (RoPE rotates pairs of dimensions), got ",
                      rotary_dim, head_dim == 0 ? " (= hidden_size / num_attention_heads)" : ""));
  }
  check_field(rms_norm_eps > 0, "model.rms_norm_eps", "> 0", rms_norm_eps);
  check_field(rope_theta > 0, "model.rope_theta", "> 0", rope_theta);
  check_field(max_position_embeddings > 0, "model.max_position_embeddings", "> 0",
              max_position_embeddings);
  check_field(initializer_range > 0, "model.initializer_range", "> 0", initializer_range,
              "an all-zero init cannot break the symmetry between units");
  check_field(family != "qwen2" || attention_bias, "model.attention_bias",
              "true when model.family is qwen2", attention_bias,
              "Qwen2 checkpoints carry q/k/v projection biases");
  check_one_of("model.dtype", dtype, {"float32", "bfloat16"});
}

}  // namespace chunkflow::configs
