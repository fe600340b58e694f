// LLaMA 2/3 and Qwen2/2.5 decoder in the LibTorch C++ API, executed one chunk at a time.
// Module and parameter names follow Hugging Face checkpoint keys ("model.layers.0.self_attn.
// q_proj.weight", "lm_head.weight"), so import/export is a plain name mapping.
//
// A chunk forward takes the chunk's tokens (several packed segments) and, when the chunk holds a
// piece of a split sequence, that sequence's K/V state buffers; it returns the final hidden states
// and every layer's own post-RoPE K/V (the tensors autograd saw, so the scheduler can inject the
// gradients later chunks sent back).
#pragma once

#include <torch/torch.h>

#include <optional>
#include <vector>

#include "configs/model_config.h"
#include "models/chunk_batch.h"
#include "models/mixed_precision.h"
#include "models/tensor_parallel.h"
#include "kernels/attention_torch.h"
#include "kernels/rope_frequencies.h"

namespace chunkflow::models {

// One layer's keys and values, post-RoPE: [rows, kv_heads, head_dim].
struct LayerKV {
  torch::Tensor k;
  torch::Tensor v;
};

// One layer's K/V state for a split sequence (see trainer/kv_state_store.h): buffers
// [capacity rows, kv_heads, head_dim] holding the sequence's earlier chunks at rows [0, rows), and
// their gradient accumulators. The chunk's own K/V is written at rows [rows, rows + tokens) and
// attention reads rows [0, rows + tokens) in place; the backward adds the gradient of rows
// [0, rows) into the accumulators.
struct KVPrefix {
  torch::Tensor k_state, v_state, k_gradient, v_gradient;
  int64_t rows = 0;
};

// keys = state rows [0, rows) followed by `own` [tokens, kv_heads, head_dim], without copying the
// prefix; differentiable with respect to `own` (and, through `gradient`, the prefix).
torch::Tensor attach_prefix(const torch::Tensor& own, const torch::Tensor& state, const torch::Tensor& gradient,
                            int64_t rows);

// Every module below computes with weights(parameter): the float32 parameter itself, or its
// compute-dtype copy under mixed precision (models/mixed_precision.h); activations between them
// are in the compute dtype. One ComputeWeights is shared by the whole model.
using SharedComputeWeights = std::shared_ptr<ComputeWeights>;
// The model's tensor-parallel group (models/tensor_parallel.h), shared by its modules; size 1
// without tensor parallelism.
using SharedTensorParallel = std::shared_ptr<const TensorParallel>;

// The model section's RoPE scaling keys as the kernels' RopeScaling.
kernels::RopeScaling rope_scaling_of(const configs::ModelConfig& config);

// kernels::rope_frequencies for the model's head_dim, theta and scaling.
kernels::RopeFrequencies rope_frequencies_of(const configs::ModelConfig& config);

// x @ weight^T + bias with the weights in the compute dtype.
torch::Tensor project(ComputeWeights& weights, const torch::nn::Linear& layer, const torch::Tensor& x);

// Hugging Face's RMSNorm (normalized in fp32, rounded to x's dtype, then times the weight), fused:
// kernels::rms_norm.
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t hidden_size, double eps, SharedComputeWeights weights);
  torch::Tensor forward(const torch::Tensor& x);  // [tokens, hidden] -> same
  torch::Tensor weight;

 private:
  double eps_;
  SharedComputeWeights weights_;
};
TORCH_MODULE(RMSNorm);

class AttentionImpl : public torch::nn::Module {
 public:
  // backend: model.attention_backend (kernels::AttentionBackend), resolved per call.
  // Under tensor parallelism the module holds this rank's heads and K/V heads (q/k/v rows, o_proj
  // columns) and sums o_proj's output over the group before adding its bias.
  AttentionImpl(const configs::ModelConfig& config, SharedComputeWeights weights, kernels::AttentionBackend backend,
                SharedTensorParallel tp);
  // x [tokens, hidden]; state: the split sequence's K/V state for the batch's first segment
  // (undefined tensors for a standalone chunk). Queries and keys are rotated by batch.positions
  // (kernels::apply_rotary with the config's RoPE scaling). Writes this chunk's own K/V into
  // *own_kv. Returns [tokens, hidden].
  torch::Tensor forward(const torch::Tensor& x, const ChunkBatch& batch, const KVPrefix& state, LayerKV* own_kv);
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  // [head_dim / 2] float32 buffer (not a parameter: never trained, saved or exported); moves with
  // the module to its device, so no rotary call copies it from the host.
  torch::Tensor rope_inv_freq;

 private:
  int64_t heads_, kv_heads_, head_dim_;  // this tp rank's
  double rope_attention_scaling_;
  SharedComputeWeights weights_;
  kernels::AttentionBackend backend_;
  SharedTensorParallel tp_;
};
TORCH_MODULE(Attention);

class MLPImpl : public torch::nn::Module {
 public:
  // Under tensor parallelism: this rank's intermediate_size / tp columns of the MLP.
  MLPImpl(const configs::ModelConfig& config, SharedComputeWeights weights, SharedTensorParallel tp);
  // down(silu(gate(x)) * up(x)), the product fused. x [rows, hidden]: this rank's rows of the
  // chunk's `chunk_rows` under sequence parallelism, all of them otherwise.
  torch::Tensor forward(const torch::Tensor& x, int64_t chunk_rows);
  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};

 private:
  SharedComputeWeights weights_;
  SharedTensorParallel tp_;
};
TORCH_MODULE(MLP);

class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(const configs::ModelConfig& config, const SharedComputeWeights& weights,
                   kernels::AttentionBackend backend, const SharedTensorParallel& tp);
  torch::Tensor forward(const torch::Tensor& x, const ChunkBatch& batch, const KVPrefix& state, LayerKV* own_kv);
  Attention self_attn{nullptr};
  MLP mlp{nullptr};
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
};
TORCH_MODULE(DecoderLayer);

// The part of the model one pipeline stage holds: a contiguous range of decoder layers, plus the
// input embedding on the first stage and the final norm + LM head on the last. The default is
// the whole model.
struct ModelStage {
  int64_t first_layer = 0;
  int64_t end_layer = -1;       // one past the last layer; -1 = through the last layer
  bool input_embedding = true;  // embeds token ids (the first stage)
  bool output_head = true;      // final norm, LM head and loss (the last stage)
};

// Stage `stage` of `stages` (pipeline parallelism): layers split contiguously and as evenly as
// possible, the earlier stages taking the remainder because the last one also runs the LM head.
// Throws core::Error naming parallel.pp and model.num_hidden_layers when there are fewer layers
// than stages.
ModelStage pipeline_stage(const configs::ModelConfig& config, int stage, int stages);

// Hugging Face's `model.` submodule: embeddings, layers, final norm. Layers keep their global
// index in their names ("layers.5") whichever stage holds them.
class DecoderImpl : public torch::nn::Module {
 public:
  DecoderImpl(const configs::ModelConfig& config, const ModelStage& stage, const SharedComputeWeights& weights,
              const SharedTensorParallel& tp);
  torch::nn::Embedding embed_tokens{nullptr};  // null on stages that neither embed nor tie the head to it
  std::shared_ptr<torch::nn::Module> layers;
  RMSNorm norm{nullptr};                       // null unless the stage has the output head
  std::vector<DecoderLayer> layer_list;        // the stage's layers, in order, typed
};
TORCH_MODULE(Decoder);

struct ChunkForward {
  torch::Tensor hidden;        // [tokens, hidden]: after the final norm
  std::vector<LayerKV> own_kv;  // [num_hidden_layers] of [tokens, kv_heads, head_dim]
};

class CausalLMImpl : public torch::nn::Module {
 public:
  // Builds `stage` of the model (default: all of it) and initializes it. Parameters are float32;
  // config.dtype is the compute dtype (mixed precision when not float32) and
  // config.attention_backend chooses the attention implementation. Each parameter draws
  // from its own generator seeded by init_seed and the parameter's name, so every stage of a
  // pipeline holds exactly the values the whole model would; without init_seed the seed is drawn
  // from torch's default generator (deterministic under torch::manual_seed).
  // tp: tensor parallelism (models/tensor_parallel.h); this rank then holds its slice of every
  // split parameter, initialized to the same values as that slice of the whole model.
  explicit CausalLMImpl(const configs::ModelConfig& config, const ModelStage& stage = {},
                        std::optional<uint64_t> init_seed = std::nullopt, TensorParallel tp = {});

  // The whole model on one chunk (needs a stage with embedding and head). state: empty for a
  // standalone chunk, else one KVPrefix per layer with rows == batch.prefix_len.
  ChunkForward forward_chunk(const ChunkBatch& batch, const std::vector<KVPrefix>& state = {});

  // The pieces a pipeline stage runs. embed: [tokens] ids -> [tokens, hidden] (first stage).
  torch::Tensor embed(const ChunkBatch& batch);
  // This stage's layers on x [tokens, hidden]; state: empty or one KVPrefix per stage layer.
  // Fills own_kv with one entry per stage layer.
  // recompute_layers (needs an empty state; no effect without grad mode): full activation
  // recomputation. Each layer runs without keeping its activations; autograd keeps only the
  // layer's input and runs the layer again, with grad, during the backward. own_kv then holds
  // tensors outside the graph: a gradient sent into them would be lost, so the scheduler uses
  // this for standalone chunks only.
  torch::Tensor forward_layers(torch::Tensor x, const ChunkBatch& batch, const std::vector<KVPrefix>& state,
                               std::vector<LayerKV>* own_kv, bool recompute_layers = false);
  // Final RMSNorm (last stage): [rows, hidden] -> [chunk_rows, hidden], the chunk's rows on this
  // rank (under sequence parallelism the norm runs on this rank's rows, which are then gathered).
  torch::Tensor final_norm(const torch::Tensor& x, int64_t chunk_rows);
  // Rows of a chunk's `chunk_rows` that flow between this stage's layers and the next stage's on
  // this rank: all of them, or this rank's share under sequence parallelism.
  int64_t activation_rows(int64_t chunk_rows) const;
  // Decoder layers this stage holds.
  int64_t stage_layers() const { return static_cast<int64_t>(model->layer_list.size()); }
  const ModelStage& stage() const { return stage_; }
  // Summed token cross-entropy of hidden [tokens, hidden] against labels [tokens] (-100 ignored),
  // computed in token tiles through the LM head (never the whole chunk x vocab in fp32). Under
  // tensor parallelism: vocab_parallel_loss_sum, the same sum on every tp rank.
  // labels_checked: every label is known to be in [0, vocab) or -100 (ChunkBatch::labels_checked),
  // which spares the CUDA path a device-to-host check.
  torch::Tensor loss_sum(const torch::Tensor& hidden, const torch::Tensor& labels, bool labels_checked = false);
  // The LM head matrix [vocab, hidden] (the embedding when tied; this rank's vocab / tp rows under
  // tensor parallelism), in the compute dtype.
  torch::Tensor lm_head_weight();

  // Normal(0, initializer_range) for projections and embeddings, ones for norms, zero biases;
  // parameter `name` draws from a generator seeded by (init_seed, name).
  void initialize_parameters(uint64_t init_seed);

  const configs::ModelConfig& config() const { return config_; }
  const TensorParallel& tensor_parallel() const { return *tp_; }
  // K/V heads this rank holds (num_key_value_heads / tp): the width of its K/V state.
  int64_t local_kv_heads() const { return config_.num_key_value_heads / tp_->size; }
  // The compute-dtype weights (mixed precision) shared by the modules.
  ComputeWeights& compute_weights() { return *weights_; }
  // Activations' dtype: config.dtype.
  torch::ScalarType compute_dtype() const { return weights_->dtype(); }

  Decoder model{nullptr};
  torch::nn::Linear lm_head{nullptr};  // null when tie_word_embeddings or without the output head

 private:
  configs::ModelConfig config_;
  ModelStage stage_;
  SharedComputeWeights weights_;
  SharedTensorParallel tp_;
};
TORCH_MODULE(CausalLM);

// Tokens per cross-entropy tile.
inline constexpr int64_t kLossTileTokens = 1024;

}  // namespace chunkflow::models
