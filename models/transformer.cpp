// The decoder modules; see transformer.h.
#include "models/transformer.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "core/error.h"
#include "kernels/attention_torch.h"
#include "kernels/cross_entropy_torch.h"
#include "kernels/fused_ops_torch.h"

namespace chunkflow::models {
namespace {

torch::nn::Linear linear(int64_t in, int64_t out, bool bias) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
}

// Autograd node of attach_prefix: forward writes `own` into the state buffer after the prefix and
// returns the buffer's rows [0, rows + tokens) as one tensor; backward sends the own rows' gradient
// to `own` and adds the prefix rows' gradient to the accumulator.
class AttachPrefix : public torch::autograd::Function<AttachPrefix> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* context, const torch::Tensor& own,
                               const torch::Tensor& state, const torch::Tensor& gradient, int64_t rows) {
    CF_ASSERT(rows + own.size(0) <= state.size(0), "K/V state buffer of ", state.size(0), " rows cannot hold ",
              rows, " + ", own.size(0));
    // A storage alias with its own version counter: rewriting rows of the buffer (a recompute
    // writes the same values again) must not invalidate views that other chunks' graphs saved.
    torch::Tensor storage = state.variable_data();
    storage.narrow(0, rows, own.size(0)).copy_(own);
    context->saved_data["gradient"] = gradient;
    context->saved_data["rows"] = rows;
    return storage.narrow(0, 0, rows + own.size(0));
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* context,
                                                 torch::autograd::variable_list outputs_gradient) {
    const torch::Tensor& keys_gradient = outputs_gradient[0];
    const int64_t rows = context->saved_data["rows"].toInt();
    torch::Tensor own_gradient;
    if (keys_gradient.defined()) {
      if (rows > 0) context->saved_data["gradient"].toTensor().narrow(0, 0, rows).add_(keys_gradient.narrow(0, 0, rows));
      own_gradient = keys_gradient.narrow(0, rows, keys_gradient.size(0) - rows);
    }
    return {own_gradient, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor attach_prefix(const torch::Tensor& own, const torch::Tensor& state, const torch::Tensor& gradient,
                            int64_t rows) {
  return AttachPrefix::apply(own, state, gradient, rows);
}

kernels::RopeScaling rope_scaling_of(const configs::ModelConfig& config) {
  kernels::RopeScaling scaling;
  scaling.type = config.rope_type;
  scaling.factor = config.rope_factor;
  scaling.original_max_position_embeddings = config.rope_original_max_position_embeddings;
  scaling.low_freq_factor = config.rope_low_freq_factor;
  scaling.high_freq_factor = config.rope_high_freq_factor;
  scaling.beta_fast = config.rope_beta_fast;
  scaling.beta_slow = config.rope_beta_slow;
  scaling.attention_factor = config.rope_attention_factor;
  scaling.mscale = config.rope_mscale;
  scaling.mscale_all_dim = config.rope_mscale_all_dim;
  scaling.truncate = config.rope_truncate;
  return scaling;
}

kernels::RopeFrequencies rope_frequencies_of(const configs::ModelConfig& config) {
  return kernels::rope_frequencies(config.rope_theta, config.effective_head_dim(), config.max_position_embeddings,
                                   rope_scaling_of(config));
}

torch::Tensor project(ComputeWeights& weights, const torch::nn::Linear& layer, const torch::Tensor& x) {
  return torch::nn::functional::linear(x, weights(layer->weight), weights(layer->bias));
}

RMSNormImpl::RMSNormImpl(int64_t hidden_size, double eps, SharedComputeWeights weights)
    : eps_(eps), weights_(std::move(weights)) {
  weight = register_parameter("weight", torch::ones({hidden_size}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) { return kernels::rms_norm(x, (*weights_)(weight), eps_); }

AttentionImpl::AttentionImpl(const configs::ModelConfig& config, SharedComputeWeights weights,
                             kernels::AttentionBackend backend, SharedTensorParallel tp)
    : heads_(config.num_attention_heads / tp->size),
      kv_heads_(config.num_key_value_heads / tp->size),
      head_dim_(config.effective_head_dim()),
      weights_(std::move(weights)),
      backend_(backend),
      tp_(std::move(tp)) {
  const kernels::RopeFrequencies frequencies = rope_frequencies_of(config);
  rope_inv_freq = register_buffer("rope_inv_freq", kernels::rope_inv_freq(frequencies));
  rope_attention_scaling_ = frequencies.attention_scaling;
  const bool qkv_bias = config.attention_bias;
  // Llama's attention_bias covers o_proj too; Qwen2 has q/k/v biases only.
  const bool o_bias = config.attention_bias && config.family == "llama";
  q_proj = register_module("q_proj", linear(config.hidden_size, heads_ * head_dim_, qkv_bias));
  k_proj = register_module("k_proj", linear(config.hidden_size, kv_heads_ * head_dim_, qkv_bias));
  v_proj = register_module("v_proj", linear(config.hidden_size, kv_heads_ * head_dim_, qkv_bias));
  o_proj = register_module("o_proj", linear(heads_ * head_dim_, config.hidden_size, o_bias));
}

namespace {

// Input of the column-parallel projections: every row, whatever this rank holds (f, or under
// sequence parallelism the gather of every rank's rows).
torch::Tensor column_parallel_input(const torch::Tensor& x, int64_t chunk_rows, const TensorParallel& tp) {
  if (tp.splits_rows()) return tp.gather_rows(x, chunk_rows);
  return tp.active() ? tp.copy_to_group(x) : x;
}

// Row-parallel output projection: this rank's columns, summed over the tp group (under sequence
// parallelism: this rank's rows of the sum), then the bias (added once). Without tensor
// parallelism, one fused x @ W^T + b.
torch::Tensor row_parallel(ComputeWeights& weights, const torch::nn::Linear& layer, const torch::Tensor& x,
                           const TensorParallel& tp) {
  if (!tp.active()) return project(weights, layer, x);
  const torch::Tensor partial = torch::nn::functional::linear(x, weights(layer->weight));
  const torch::Tensor summed = tp.splits_rows() ? tp.scatter_rows(partial) : tp.sum_over_group(partial);
  return layer->bias.defined() ? summed + weights(layer->bias) : summed;
}

}  // namespace

torch::Tensor AttentionImpl::forward(const torch::Tensor& layer_input, const ChunkBatch& batch, const KVPrefix& state,
                                     LayerKV* own_kv) {
  // Column-parallel q/k/v: the input's gradient is summed over the tp group in the backward.
  const torch::Tensor x = column_parallel_input(layer_input, batch.tokens(), *tp_);
  const int64_t tokens = x.size(0);
  const torch::Tensor q =
      kernels::apply_rotary(project(*weights_, q_proj, x).view({tokens, heads_, head_dim_}), batch.positions,
                            rope_inv_freq, rope_attention_scaling_);
  const torch::Tensor k = kernels::apply_rotary(project(*weights_, k_proj, x).view({tokens, kv_heads_, head_dim_}),
                                                batch.positions, rope_inv_freq, rope_attention_scaling_);
  const torch::Tensor v = project(*weights_, v_proj, x).view({tokens, kv_heads_, head_dim_});
  // Under context parallelism the attention reads every cp rank's K/V: this chunk's "own" K/V
  // (what the K/V state stores and what later chunks send gradients to) are the gathered rows.
  const ContextShard* context = batch.context.get();
  own_kv->k = context != nullptr ? context->gather_chunk_rows(k) : k;
  own_kv->v = context != nullptr ? context->gather_chunk_rows(v) : v;
  torch::Tensor keys = own_kv->k, values = own_kv->v;
  if (state.k_state.defined()) {
    CF_ASSERT(state.rows == batch.prefix_len, "K/V state rows ", state.rows, " != prefix_len ", batch.prefix_len);
    // The prefix belongs to the first segment, whose keys come first in cu_seqlens_k.
    keys = attach_prefix(keys, state.k_state, state.k_gradient, state.rows);
    values = attach_prefix(values, state.v_state, state.v_gradient, state.rows);
  } else {
    CF_ASSERT(batch.prefix_len == 0, "a chunk with a K/V prefix needs the sequence's state");
  }
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim_));
  torch::Tensor attended;
  if (context != nullptr) {
    // Early pieces, then late pieces, each reading the keys in place. Both calls run even without
    // queries, so that every cp rank's graph reaches the K/V gather's backward (a collective).
    std::vector<torch::Tensor> outputs;
    for (const AttentionPass& pass : context->passes) {
      outputs.push_back(
          kernels::varlen_attention(q.index_select(0, pass.query_rows), keys, values, pass.offsets(), scale, backend_));
    }
    attended = torch::cat(outputs, 0).index_select(0, context->output_order);
  } else {
    attended = kernels::varlen_attention(q, keys, values, batch.offsets(), scale, backend_);
  }
  return row_parallel(*weights_, o_proj, attended.reshape({tokens, heads_ * head_dim_}), *tp_);
}

MLPImpl::MLPImpl(const configs::ModelConfig& config, SharedComputeWeights weights, SharedTensorParallel tp)
    : weights_(std::move(weights)), tp_(std::move(tp)) {
  const int64_t intermediate = config.intermediate_size / tp_->size;
  gate_proj = register_module("gate_proj", linear(config.hidden_size, intermediate, false));
  up_proj = register_module("up_proj", linear(config.hidden_size, intermediate, false));
  down_proj = register_module("down_proj", linear(intermediate, config.hidden_size, false));
}

torch::Tensor MLPImpl::forward(const torch::Tensor& layer_input, int64_t chunk_rows) {
  const torch::Tensor x = column_parallel_input(layer_input, chunk_rows, *tp_);
  return row_parallel(*weights_, down_proj,
                      kernels::swiglu(project(*weights_, gate_proj, x), project(*weights_, up_proj, x)), *tp_);
}

DecoderLayerImpl::DecoderLayerImpl(const configs::ModelConfig& config, const SharedComputeWeights& weights,
                                   kernels::AttentionBackend backend, const SharedTensorParallel& tp) {
  self_attn = register_module("self_attn", Attention(config, weights, backend, tp));
  mlp = register_module("mlp", MLP(config, weights, tp));
  input_layernorm = register_module("input_layernorm", RMSNorm(config.hidden_size, config.rms_norm_eps, weights));
  post_attention_layernorm =
      register_module("post_attention_layernorm", RMSNorm(config.hidden_size, config.rms_norm_eps, weights));
}

torch::Tensor DecoderLayerImpl::forward(const torch::Tensor& x, const ChunkBatch& batch, const KVPrefix& state,
                                        LayerKV* own_kv) {
  const torch::Tensor h = x + self_attn(input_layernorm(x), batch, state, own_kv);
  return h + mlp(post_attention_layernorm(h), batch.tokens());
}

ModelStage pipeline_stage(const configs::ModelConfig& config, int stage, int stages) {
  const int64_t layers = config.num_hidden_layers;
  CF_CHECK(stages >= 1 && layers >= stages, "parallel.pp = ", stages, " pipeline stages need at least as many decoder "
           "layers, but model.num_hidden_layers = ", layers);
  CF_ASSERT(stage >= 0 && stage < stages, "pipeline stage ", stage, " of ", stages);
  const int64_t base = layers / stages, remainder = layers % stages;
  ModelStage result;
  result.first_layer = stage * base + std::min<int64_t>(stage, remainder);
  result.end_layer = result.first_layer + base + (stage < remainder ? 1 : 0);
  result.input_embedding = stage == 0;
  result.output_head = stage == stages - 1;
  return result;
}

DecoderImpl::DecoderImpl(const configs::ModelConfig& config, const ModelStage& stage,
                         const SharedComputeWeights& weights, const SharedTensorParallel& tp) {
  const kernels::AttentionBackend backend = kernels::parse_attention_backend(config.attention_backend);
  // The last stage of a tied model needs the embedding matrix as its LM head.
  if (stage.input_embedding || (stage.output_head && config.tie_word_embeddings)) {
    embed_tokens =
        register_module("embed_tokens", torch::nn::Embedding(config.vocab_size / tp->size, config.hidden_size));
  }
  layers = register_module("layers", std::make_shared<torch::nn::Module>());
  const int64_t end = stage.end_layer < 0 ? config.num_hidden_layers : stage.end_layer;
  CF_ASSERT(stage.first_layer >= 0 && stage.first_layer <= end && end <= config.num_hidden_layers,
            "stage layers [", stage.first_layer, ", ", end, ") of ", config.num_hidden_layers);
  for (int64_t i = stage.first_layer; i < end; ++i) {
    layer_list.push_back(DecoderLayer(config, weights, backend, tp));
    layers->register_module(std::to_string(i), layer_list.back());
  }
  if (stage.output_head) norm = register_module("norm", RMSNorm(config.hidden_size, config.rms_norm_eps, weights));
}

CausalLMImpl::CausalLMImpl(const configs::ModelConfig& config, const ModelStage& stage,
                           std::optional<uint64_t> init_seed, TensorParallel tp)
    : config_(config), stage_(stage), tp_(std::make_shared<const TensorParallel>(std::move(tp))) {
  config_.validate();
  check_tensor_parallel(config_, tp_->size);
  CF_ASSERT(tp_->rank >= 0 && tp_->rank < tp_->size, "tensor-parallel rank ", tp_->rank, " of ", tp_->size);
  CF_ASSERT(!tp_->active() || (tp_->copy_to_group && tp_->sum_over_group && tp_->all_reduce_sum && tp_->all_reduce_max),
            "tensor parallelism without its collectives");
  CF_ASSERT(!tp_->splits_rows() || (tp_->gather_rows && tp_->scatter_rows),
            "sequence parallelism without its collectives");
  weights_ = std::make_shared<ComputeWeights>(parse_dtype(config_.dtype, "model.dtype"));
  if (!init_seed) {
    // One draw from torch's default generator keeps construction deterministic under
    // manual_seed. It comes first: building the modules below draws from the same generator (their
    // default initialization, overwritten later), as often as this stage has modules.
    init_seed = static_cast<uint64_t>(torch::randint(0, int64_t{1} << 62, {1}, torch::kInt64).item<int64_t>());
  }
  if (stage_.end_layer < 0) stage_.end_layer = config_.num_hidden_layers;
  model = register_module("model", Decoder(config_, stage_, weights_, tp_));
  if (stage_.output_head && !config_.tie_word_embeddings) {
    lm_head = register_module("lm_head", linear(config_.hidden_size, config_.vocab_size / tp_->size, false));
  }
  initialize_parameters(*init_seed);
}

void CausalLMImpl::initialize_parameters(uint64_t init_seed) {
  torch::NoGradGuard no_grad;
  for (auto& item : named_parameters()) {
    const std::string& name = item.key();
    torch::Tensor& parameter = item.value();
    if (name.find("norm.weight") != std::string::npos) {
      parameter.fill_(1.0);
    } else if (name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0) {
      parameter.zero_();
    } else {
      // FNV-1a of the name, mixed with the seed: the values depend on (seed, name) only, not on
      // which other parameters this stage holds or their order.
      uint64_t hash = 1469598103934665603ull;
      for (const char c : name) hash = (hash ^ static_cast<uint8_t>(c)) * 1099511628211ull;
      at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(init_seed ^ hash);
      const int dim = tensor_parallel_dim(name);
      if (!tp_->active() || dim < 0) {
        parameter.normal_(0.0, config_.initializer_range, generator);
        continue;
      }
      // This rank's slice of the whole parameter's draw: tp ranks then hold the single-rank values.
      std::vector<int64_t> whole_shape = parameter.sizes().vec();
      whole_shape[static_cast<size_t>(dim)] *= tp_->size;
      const torch::Tensor whole =
          torch::empty(whole_shape, parameter.options()).normal_(0.0, config_.initializer_range, generator);
      parameter.copy_(tensor_parallel_slice(whole, name, tp_->rank, tp_->size));
    }
  }
}

torch::Tensor CausalLMImpl::lm_head_weight() {
  CF_ASSERT(stage_.output_head, "this pipeline stage has no LM head");
  return (*weights_)(config_.tie_word_embeddings ? model->embed_tokens->weight : lm_head->weight);
}

torch::Tensor CausalLMImpl::embed(const ChunkBatch& batch) {
  CF_ASSERT(stage_.input_embedding, "this pipeline stage does not embed tokens");
  // Gathered from the float32 table and then rounded: the same values as gathering from a rounded
  // table, and the backward scatters float32 gradients without a [vocab, hidden] transient.
  if (!tp_->active()) return weights_->activations(model->embed_tokens(batch.input_ids));
  // Vocabulary-parallel: this rank's rows look up their tokens, other tokens get zeros, and the sum
  // over the tp group holds every token's row.
  const int64_t rows = model->embed_tokens->weight.size(0);
  const torch::Tensor local_ids = batch.input_ids - rows * tp_->rank;
  const torch::Tensor held = local_ids.ge(0).logical_and(local_ids.lt(rows));
  const torch::Tensor looked_up = model->embed_tokens(local_ids.clamp(0, rows - 1)) * held.unsqueeze(1);
  return weights_->activations(tp_->splits_rows() ? tp_->scatter_rows(looked_up) : tp_->sum_over_group(looked_up));
}

namespace {

// What a recomputed layer needs again in its backward: the layer and the chunk's batch (tensors
// and offsets, shared, not copied).
struct LayerRecomputeInputs : torch::CustomClassHolder {
  DecoderLayer layer;
  ChunkBatch batch;
  LayerRecomputeInputs(DecoderLayer layer_, ChunkBatch batch_) : layer(std::move(layer_)), batch(std::move(batch_)) {}
};

// One decoder layer under full activation recomputation. Forward: the layer without a graph
// (custom functions run their forward in no-grad mode); only the input is saved. Backward: the
// layer again from the saved input with grad, then a nested backward that adds the parameters'
// gradients and yields the input's. Without dropout the second forward repeats the first
// exactly, so gradients equal those of the plain layer.
class RecomputedLayer : public torch::autograd::Function<RecomputedLayer> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* context, const torch::Tensor& x,
                               c10::intrusive_ptr<LayerRecomputeInputs> inputs, LayerKV* own_kv) {
    context->save_for_backward({x});
    torch::Tensor y = inputs->layer(x, inputs->batch, KVPrefix{}, own_kv);
    context->saved_data["inputs"] = c10::IValue::make_capsule(std::move(inputs));
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* context,
                                                 torch::autograd::variable_list output_gradients) {
    const auto inputs =
        c10::static_intrusive_pointer_cast<LayerRecomputeInputs>(context->saved_data["inputs"].toCapsule());
    const torch::Tensor x = context->get_saved_variables()[0].detach().requires_grad_(true);
    torch::Tensor y;
    {
      torch::AutoGradMode grad_mode(true);
      LayerKV unused;
      y = inputs->layer(x, inputs->batch, KVPrefix{}, &unused);
    }
    torch::autograd::backward({y}, {output_gradients[0]});
    return {x.grad(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor CausalLMImpl::forward_layers(torch::Tensor x, const ChunkBatch& batch, const std::vector<KVPrefix>& state,
                                           std::vector<LayerKV>* own_kv, bool recompute_layers) {
  const size_t layer_count = model->layer_list.size();
  CF_ASSERT(state.empty() || state.size() == layer_count, "K/V state has ", state.size(), " layers, stage has ",
            layer_count);
  CF_ASSERT(!recompute_layers || state.empty(), "layer recomputation needs a chunk without K/V state");
  own_kv->assign(layer_count, LayerKV{});
  const KVPrefix no_state;
  const bool recompute = recompute_layers && torch::GradMode::is_enabled();
  // A custom function records its graph only for inputs that need a gradient; the parameters'
  // gradients flow through that graph, so the input must be part of it.
  if (recompute && !x.requires_grad()) x = x.detach().requires_grad_(true);
  for (size_t i = 0; i < layer_count; ++i) {
    if (recompute) {
      x = RecomputedLayer::apply(x, c10::make_intrusive<LayerRecomputeInputs>(model->layer_list[i], batch),
                                 &(*own_kv)[i]);
    } else {
      x = model->layer_list[i](x, batch, state.empty() ? no_state : state[i], &(*own_kv)[i]);
    }
  }
  return x;
}

torch::Tensor CausalLMImpl::final_norm(const torch::Tensor& x, int64_t chunk_rows) {
  CF_ASSERT(stage_.output_head, "this pipeline stage has no output head");
  // Under sequence parallelism the gather's backward sums the loss's partial gradients (each rank
  // holds part of the vocabulary) and keeps this rank's rows: the loss then needs no f.
  return tp_->splits_rows() ? tp_->gather_rows(model->norm(x), chunk_rows) : model->norm(x);
}

int64_t CausalLMImpl::activation_rows(int64_t chunk_rows) const {
  return tp_->splits_rows() ? sequence_rows(chunk_rows, tp_->rank, tp_->size).count : chunk_rows;
}

ChunkForward CausalLMImpl::forward_chunk(const ChunkBatch& batch, const std::vector<KVPrefix>& state) {
  ChunkForward result;
  result.hidden = final_norm(forward_layers(embed(batch), batch, state, &result.own_kv), batch.tokens());
  return result;
}

torch::Tensor CausalLMImpl::loss_sum(const torch::Tensor& hidden, const torch::Tensor& labels, bool labels_checked) {
  if (tp_->active()) {
    const torch::Tensor whole_rows = tp_->splits_rows() ? hidden : tp_->copy_to_group(hidden);
    return vocab_parallel_loss_sum(whole_rows, lm_head_weight(), labels, *tp_, kLossTileTokens);
  }
  return kernels::tiled_cross_entropy_sum(hidden, lm_head_weight(), labels, kLossTileTokens, labels_checked);
}

}  // namespace chunkflow::models
