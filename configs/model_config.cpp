// Rules of the `model` section; see model_config.h.
#include "configs/model_config.h"

#include <initializer_list>
#include <string>
#include <vector>

#include "configs/config_error.h"
#include "core/error.h"

namespace chunkflow::configs {

namespace {

// Sizes with a few digits too many would reach torch as an allocation of exabytes or, past 2^63,
// overflow the shape arithmetic (projection widths, checkpoint byte counts, FLOP counts) before
// anything could say which key is wrong. 2^50 parameters is over 500x the largest model trained
// to date, so the bound refuses only typos.
constexpr int64_t kMaxParameters = int64_t{1} << 50;

// a * b, or kMaxParameters + 1 once the product passes kMaxParameters (operands are positive).
int64_t bounded_product(int64_t a, int64_t b) {
  int64_t product = 0;
  if (__builtin_mul_overflow(a, b, &product) || product > kMaxParameters) return kMaxParameters + 1;
  return product;
}

int64_t bounded_sum(std::initializer_list<int64_t> terms) {
  int64_t sum = 0;
  for (const int64_t term : terms) {
    if (__builtin_add_overflow(sum, term, &sum) || sum > kMaxParameters) return kMaxParameters + 1;
  }
  return sum;
}

// Needs positive sizes (checked before).
void check_parameter_count(const ModelConfig& config) {
  const int64_t head_dim = config.effective_head_dim();
  const int64_t q_width = bounded_product(config.num_attention_heads, head_dim);
  const int64_t kv_width = bounded_product(config.num_key_value_heads, head_dim);
  const int64_t hidden = config.hidden_size;
  const int64_t q_params = bounded_product(q_width, hidden);
  const int64_t kv_params = bounded_product(kv_width, hidden);
  const int64_t mlp_params = bounded_product(config.intermediate_size, hidden);
  // q and o, k and v, gate, up and down projections, two norms, and at most these biases. Every
  // term is at most kMaxParameters + 1, so the sum cannot overflow.
  const int64_t per_layer = bounded_sum({q_params, q_params, kv_params, kv_params, mlp_params, mlp_params,
                                         mlp_params, hidden, hidden, q_width, kv_width, kv_width, hidden});
  const int64_t embeddings = bounded_product(config.vocab_size, hidden);
  const int64_t parameters =
      bounded_sum({embeddings, config.tie_word_embeddings ? 0 : embeddings,
                   bounded_product(config.num_hidden_layers, per_layer), hidden});
  if (parameters <= kMaxParameters) return;

  // Name the largest term (the first one on a tie: of several saturated products, the one whose
  // own sizes are too large comes before the whole-model totals).
  // head_dim derives from hidden_size unless set: then hidden_size is the one key to name.
  const auto attention_keys = [&](const char* heads_key) {
    return config.head_dim != 0 ? std::vector<std::string>{heads_key, "model.head_dim", "model.hidden_size"}
                                : std::vector<std::string>{heads_key, "model.hidden_size"};
  };
  struct Term {
    int64_t parameters;
    std::vector<std::string> keys;
    std::string text;
  };
  std::vector<Term> terms = {
      {embeddings, {"model.vocab_size", "model.hidden_size"},
       core::str_cat("model.vocab_size x model.hidden_size = ", config.vocab_size, " x ", hidden)},
      {q_params, attention_keys("model.num_attention_heads"),
       core::str_cat("model.num_attention_heads x head_dim x model.hidden_size = ", config.num_attention_heads, " x ",
                     head_dim, " x ", hidden)},
      {kv_params, attention_keys("model.num_key_value_heads"),
       core::str_cat("model.num_key_value_heads x head_dim x model.hidden_size = ", config.num_key_value_heads,
                     " x ", head_dim, " x ", hidden)},
      {mlp_params, {"model.intermediate_size", "model.hidden_size"},
       core::str_cat("model.intermediate_size x model.hidden_size = ", config.intermediate_size, " x ", hidden)},
  };
  // A layer over the bound on its own is named by its largest projection above.
  if (per_layer <= kMaxParameters) {
    terms.push_back({bounded_product(config.num_hidden_layers, per_layer), {"model.num_hidden_layers"},
                     core::str_cat("model.num_hidden_layers x parameters per layer = ", config.num_hidden_layers,
                                   " x ", per_layer)});
  }
  const Term* largest = &terms.front();
  for (const Term& term : terms) {
    if (term.parameters > largest->parameters) largest = &term;
  }
  throw ConfigError(largest->keys,
                    core::str_cat(largest->text, " gives the model over 2^50 (1.1e15) parameters; a size has too "
                                  "many digits"));
}

// The rules of kernels::rope_frequencies, named by key. dynamic and longrope are refused with
// their reason: transformers recomputes them from each forward call's longest position.
void validate_rope_scaling(const ModelConfig& config) {
  if (config.rope_type == "dynamic" || config.rope_type == "longrope") {
    throw ConfigError("model.rope_type",
                      core::str_cat("model.rope_type must be one of default, linear, llama3, yarn, got \"",
                                    config.rope_type, "\": transformers recomputes ", config.rope_type,
                                    " frequencies from the longest position of each forward call, so a token's "
                                    "encoding would depend on how its batch is cut and no chunked or packed "
                                    "training could match it; extend the context with linear, llama3 or yarn"));
  }
  check_one_of("model.rope_type", config.rope_type, {"default", "linear", "llama3", "yarn"});
  if (config.rope_type == "default") {
    check_field(config.rope_factor == 1.0, "model.rope_factor", "1 when model.rope_type is default",
                config.rope_factor, "set model.rope_type to linear, llama3 or yarn to extend the context");
    return;
  }
  check_field(config.rope_factor >= 1.0, "model.rope_factor", ">= 1", config.rope_factor);
  check_field(config.rope_original_max_position_embeddings >= 0, "model.rope_original_max_position_embeddings",
              ">= 0", config.rope_original_max_position_embeddings);
  if (config.rope_type == "llama3") {
    check_field(config.rope_original_max_position_embeddings > 0, "model.rope_original_max_position_embeddings",
                "> 0 when model.rope_type is llama3 (the pre-training context)",
                config.rope_original_max_position_embeddings);
    check_field(config.rope_low_freq_factor > 0, "model.rope_low_freq_factor", "> 0", config.rope_low_freq_factor);
    check_field(config.rope_high_freq_factor > config.rope_low_freq_factor, "model.rope_high_freq_factor",
                core::str_cat("> model.rope_low_freq_factor (", config.rope_low_freq_factor, ")"),
                config.rope_high_freq_factor);
  }
  if (config.rope_type == "yarn") {
    check_field(config.rope_beta_fast > 0, "model.rope_beta_fast", "> 0", config.rope_beta_fast);
    check_field(config.rope_beta_slow > 0, "model.rope_beta_slow", "> 0", config.rope_beta_slow);
    check_field(config.rope_attention_factor >= 0, "model.rope_attention_factor", ">= 0 (0 = derived)",
                config.rope_attention_factor);
    check_field(config.rope_mscale >= 0, "model.rope_mscale", ">= 0 (0 = unset)", config.rope_mscale);
    check_field(config.rope_mscale_all_dim >= 0, "model.rope_mscale_all_dim", ">= 0 (0 = unset)",
                config.rope_mscale_all_dim);
  }
}

}  // namespace

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
  check_parameter_count(*this);
  check_field(rms_norm_eps > 0, "model.rms_norm_eps", "> 0", rms_norm_eps);
  check_field(rope_theta > 0, "model.rope_theta", "> 0", rope_theta);
  validate_rope_scaling(*this);
  check_field(max_position_embeddings > 0, "model.max_position_embeddings", "> 0",
              max_position_embeddings);
  check_field(initializer_range > 0, "model.initializer_range", "> 0", initializer_range,
              "an all-zero init cannot break the symmetry between units");
  check_field(family != "qwen2" || attention_bias, "model.attention_bias",
              "true when model.family is qwen2", attention_bias,
              "Qwen2 checkpoints carry q/k/v projection biases");
  check_one_of("model.dtype", dtype, {"float32", "bfloat16"});
  check_one_of("model.attention_backend", attention_backend, {"auto", "chunkflow", "flash", "composite"});
}

}  // namespace chunkflow::configs
