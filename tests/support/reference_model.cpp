// Reference forward; see reference_model.h.
#include "tests/support/reference_model.h"

#include <cmath>
#include <stdexcept>

#include "models/transformer.h"

namespace chunkflow::testing {
namespace {

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  return weight * (x / torch::sqrt(x.square().mean({-1}, true) + eps));
}

// x [heads, tokens, dim]: rotate pairs (i, i + dim/2) by angle position x inv_freq[i], cos and
// sin times the attention scaling, in x's dtype. The table is the model's (kernels/
// rope_frequencies.h, checked against transformers by RopeScalingTest): what is tested here is
// that chunking rotates every row at its position in the whole sequence.
torch::Tensor rotate(const torch::Tensor& x, const kernels::RopeFrequencies& frequencies) {
  const int64_t tokens = x.size(1), half = x.size(2) / 2;
  const auto options = torch::TensorOptions().dtype(torch::kFloat64);
  const torch::Tensor frequency = torch::tensor(frequencies.inv_freq, torch::kFloat).to(torch::kFloat64);
  const torch::Tensor angle = torch::outer(torch::arange(tokens, options), frequency).to(x.scalar_type());
  const double scaling = frequencies.attention_scaling;
  const torch::Tensor c = angle.cos() * scaling, s = angle.sin() * scaling;
  const torch::Tensor first = x.narrow(2, 0, half), second = x.narrow(2, half, half);
  return torch::cat({first * c - second * s, second * c + first * s}, 2);
}

}  // namespace

torch::Tensor reference_mean_loss(const torch::OrderedDict<std::string, torch::Tensor>& named_parameters,
                                  const configs::ModelConfig& config,
                                  const std::vector<ReferenceSequence>& sequences) {
  const auto p = [&](const std::string& name) -> torch::Tensor {
    const torch::Tensor* found = named_parameters.find(name);
    if (found == nullptr) throw std::runtime_error("reference: no parameter " + name);
    return *found;
  };
  const auto maybe = [&](const std::string& name) -> torch::Tensor {
    const torch::Tensor* found = named_parameters.find(name);
    return found == nullptr ? torch::Tensor() : *found;
  };
  const int64_t heads = config.num_attention_heads, kv_heads = config.num_key_value_heads;
  const int64_t dim = config.effective_head_dim();
  const kernels::RopeFrequencies frequencies = models::rope_frequencies_of(config);
  const torch::Tensor head = config.tie_word_embeddings ? p("model.embed_tokens.weight") : p("lm_head.weight");

  torch::Tensor total = torch::zeros({}, p("model.embed_tokens.weight").options());
  int64_t targets = 0;
  for (const auto& sequence : sequences) {
    const auto length = static_cast<int64_t>(sequence.tokens.size());
    if (length < 2) continue;
    const torch::Tensor tokens = torch::tensor(sequence.tokens, torch::kInt64);
    torch::Tensor x = p("model.embed_tokens.weight").index_select(0, tokens);
    const torch::Tensor future = torch::ones({length, length}, torch::kBool).triu(1);
    for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
      const std::string at = "model.layers." + std::to_string(layer) + ".";
      const auto project = [&](const torch::Tensor& input, const std::string& name) {
        torch::Tensor y = input.matmul(p(at + name + ".weight").t());
        const torch::Tensor bias = maybe(at + name + ".bias");
        return bias.defined() ? y + bias : y;
      };
      const torch::Tensor h = rms_norm(x, p(at + "input_layernorm.weight"), config.rms_norm_eps);
      torch::Tensor q = project(h, "self_attn.q_proj").view({length, heads, dim}).transpose(0, 1);
      torch::Tensor k = project(h, "self_attn.k_proj").view({length, kv_heads, dim}).transpose(0, 1);
      torch::Tensor v = project(h, "self_attn.v_proj").view({length, kv_heads, dim}).transpose(0, 1);
      q = rotate(q, frequencies);
      k = rotate(k, frequencies).repeat_interleave(heads / kv_heads, 0);
      v = v.repeat_interleave(heads / kv_heads, 0);
      const torch::Tensor scores =
          q.matmul(k.transpose(1, 2)).div(std::sqrt(static_cast<double>(dim))).masked_fill(future, -INFINITY);
      const torch::Tensor attended = scores.softmax(-1).matmul(v).transpose(0, 1).reshape({length, heads * dim});
      x = x + project(attended, "self_attn.o_proj");
      const torch::Tensor g = rms_norm(x, p(at + "post_attention_layernorm.weight"), config.rms_norm_eps);
      const torch::Tensor gate = project(g, "mlp.gate_proj");
      x = x + project(gate * torch::sigmoid(gate) * project(g, "mlp.up_proj"), "mlp.down_proj");
    }
    const torch::Tensor logits = rms_norm(x, p("model.norm.weight"), config.rms_norm_eps).matmul(head.t());
    std::vector<int64_t> labels(sequence.tokens.begin() + 1, sequence.tokens.end());
    for (int64_t i = 1; i < length; ++i) {
      if (!sequence.loss_mask.empty() && sequence.loss_mask[static_cast<size_t>(i)] == 0) labels[static_cast<size_t>(i - 1)] = -100;
      else ++targets;
    }
    total = total + torch::nn::functional::cross_entropy(
                        logits.narrow(0, 0, length - 1), torch::tensor(labels, torch::kInt64),
                        torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100).reduction(torch::kSum));
  }
  return targets == 0 ? total : total / static_cast<double>(targets);
}

}  // namespace chunkflow::testing
