// The `model` section: the decoder architecture, with Hugging Face LlamaConfig / Qwen2Config
// field names so a config.json maps onto it key for key.
#pragma once

#include <cstdint>
#include <string>

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
    visit("max_position_embeddings", self.max_position_embeddings,
          "positions the checkpoint was trained on (metadata for export)");
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
