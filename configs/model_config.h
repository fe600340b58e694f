// The `model` section: the decoder architecture, with Hugging Face LlamaConfig / Qwen2Config
// field names so a config.json maps onto it key for key.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace chunkflow::configs {

struct ModelConfig {
  static constexpr const char* kSection = "model";

  std::string family = "llama";
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;
  int64_t head_dim = 0;  // 0: hidden_size / num_attention_heads
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  // RoPE scaling for context extension, as transformers' rope_scaling (kernels/rope_frequencies.h).
  std::string rope_type = "default";
  double rope_factor = 1.0;
  int64_t rope_original_max_position_embeddings = 0;
  double rope_low_freq_factor = 1.0;
  double rope_high_freq_factor = 4.0;
  double rope_beta_fast = 32.0;
  double rope_beta_slow = 1.0;
  double rope_attention_factor = 0.0;
  double rope_mscale = 0.0;
  double rope_mscale_all_dim = 0.0;
  bool rope_truncate = true;
  int64_t max_position_embeddings = 4096;
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  double initializer_range = 0.02;
  std::string init_from;  // "": random init; else a Hugging Face model directory
  std::string dtype = "float32";
  std::string attention_backend = "auto";

  template <typename Visitor>
  void visit_fields(Visitor&& visit) { fields(*this, visit); }
  template <typename Visitor>
  void visit_fields(Visitor&& visit) const { fields(*this, visit); }

  // Throws ConfigError naming model.<key> when a rule is broken.
  void validate() const;

  // The sizes tensor parallelism splits over parallel.tp ranks, by key: attention heads, K/V heads,
  // MLP width, vocabulary (each must be a multiple of tp).
  std::vector<std::pair<std::string, int64_t>> tensor_parallel_split_sizes() const {
    return {{"model.num_attention_heads", num_attention_heads},
            {"model.num_key_value_heads", num_key_value_heads},
            {"model.intermediate_size", intermediate_size},
            {"model.vocab_size", vocab_size}};
  }
  // head_dim, or hidden_size / num_attention_heads when head_dim is 0.
  int64_t effective_head_dim() const;

  bool operator==(const ModelConfig&) const = default;

 private:
  template <typename Self, typename Visitor>
  static void fields(Self& self, Visitor& visit) {
    visit("family", self.family, "llama | qwen2");
    visit("vocab_size", self.vocab_size, "token vocabulary size");
    visit("hidden_size", self.hidden_size, "model width");
    visit("intermediate_size", self.intermediate_size, "MLP (SwiGLU) width");
    visit("num_hidden_layers", self.num_hidden_layers, "decoder layers");
    visit("num_attention_heads", self.num_attention_heads, "query heads");
    visit("num_key_value_heads", self.num_key_value_heads, "K/V heads (GQA); divides the query heads");
    visit("head_dim", self.head_dim, "per-head width; 0 = hidden_size / num_attention_heads");
    visit("rms_norm_eps", self.rms_norm_eps, "RMSNorm epsilon");
    visit("rope_theta", self.rope_theta, "RoPE base");
    visit("rope_type", self.rope_type, "RoPE scaling: default | linear | llama3 | yarn");
    visit("rope_factor", self.rope_factor, "context extension factor (linear, llama3, yarn); 1 with default");
    visit("rope_original_max_position_embeddings", self.rope_original_max_position_embeddings,
          "pre-extension context (llama3: required; yarn: 0 = max_position_embeddings)");
    visit("rope_low_freq_factor", self.rope_low_freq_factor, "llama3: long-wavelength bound");
    visit("rope_high_freq_factor", self.rope_high_freq_factor, "llama3: short-wavelength bound");
    visit("rope_beta_fast", self.rope_beta_fast, "yarn: rotations where extrapolation ends");
    visit("rope_beta_slow", self.rope_beta_slow, "yarn: rotations where interpolation begins");
    visit("rope_attention_factor", self.rope_attention_factor,
          "yarn: cos/sin scaling; 0 = derived from rope_factor (and mscale)");
    visit("rope_mscale", self.rope_mscale, "yarn: mscale (0 = unset)");
    visit("rope_mscale_all_dim", self.rope_mscale_all_dim, "yarn: mscale_all_dim (0 = unset)");
    visit("rope_truncate", self.rope_truncate, "yarn: round the correction range to whole dimensions");
    visit("max_position_embeddings", self.max_position_embeddings,
          "positions the model is meant for (yarn's pre-extension context when "
          "rope_original_max_position_embeddings is 0; otherwise metadata for export)");
    visit("tie_word_embeddings", self.tie_word_embeddings, "LM head shares the embedding matrix");
    visit("attention_bias", self.attention_bias, "biases on the attention projections");
    visit("initializer_range", self.initializer_range, "std of the random init");
    visit("init_from", self.init_from, "Hugging Face model folder; \"\" = random init");
    visit("dtype", self.dtype,
          "compute dtype: float32 | bfloat16 (mixed precision: float32 master weights, gradients and AdamW state)");
    visit("attention_backend", self.attention_backend, "auto | chunkflow | flash | composite");
  }
};

}  // namespace chunkflow::configs
