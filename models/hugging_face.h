// Hugging Face model directories: config.json of LlamaForCausalLM / Qwen2ForCausalLM <-> our
// ModelConfig, weights (model.safetensors or shards + index) into a model or a pipeline stage of
// it, and writing a directory that transformers loads (config.json, generation_config.json,
// sharded safetensors, tokenizer files carried through).
//
// Parameter names are the Hugging Face keys ("model.layers.0.self_attn.q_proj.weight"), so the
// mapping is by name; only the LM head of a tied model is special (Hugging Face omits it).
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "configs/model_config.h"
#include "models/transformer.h"

namespace chunkflow::models {

// Reads `directory`/config.json. Supports LlamaForCausalLM and Qwen2ForCausalLM with RoPE (plain,
// or scaled: linear, llama3, yarn, from "rope_scaling" or "rope_parameters") and SwiGLU; anything
// that would change the math and is not implemented (dynamic or longrope RoPE, partial rotary,
// hidden_act other than silu, mlp_bias, Qwen2 sliding-window attention) is an error naming the
// file, the key and the value, as is a missing or mistyped required key. init_from is set to
// `directory`, dtype stays float32 (training precision is the run's choice).
configs::ModelConfig read_hf_config(const std::string& directory);

// The run's model section with the architecture of run_model.init_from's config.json: every
// architecture key comes from config.json. A key the run config sets to a value that is neither
// the default nor config.json's is an error naming both values (the run would silently train a
// different model than the user wrote); dtype and init_from stay the run's. Context extension: a
// run whose model.rope_type is not default brings its own RoPE scaling keys (and may set
// max_position_embeddings), replacing config.json's.
configs::ModelConfig merge_hf_config(const configs::ModelConfig& run_model);

// Every tensor the whole model has in a Hugging Face checkpoint, with its shape, in module order
// (the LM head only when untied).
std::vector<std::pair<std::string, std::vector<int64_t>>> hf_tensor_shapes(const configs::ModelConfig& config);

// Copies the weights of `directory` into `model` (any pipeline stage: only the tensors the stage
// holds are read), converting bf16/fp16 to the parameter dtype. Errors name the tensors: any the
// stage needs that the checkpoint lacks; any the checkpoint has that the whole model does not
// (a different architecture; rotary inv_freq buffers and a tied model's lm_head.weight are
// ignored); any whose shape differs from the model's.
void load_hf_weights(CausalLM& model, const std::string& directory);

// The tensors of `model` under their Hugging Face names, converted to `dtype` (float32 | bfloat16
// | float16), on the CPU. A tied model has no lm_head.weight (transformers re-ties it).
std::vector<std::pair<std::string, torch::Tensor>> hf_named_tensors(CausalLM& model, const std::string& dtype);

// Files of a Hugging Face directory that are not weights and that a fine-tuned export keeps:
// the source config.json (token ids and other keys), generation_config.json and the tokenizer.
inline constexpr const char* kHfCarriedFiles[] = {
    "config.json",       "generation_config.json", "tokenizer.json",  "tokenizer_config.json",
    "special_tokens_map.json", "tokenizer.model",  "vocab.json",      "merges.txt",
    "added_tokens.json", "chat_template.jinja"};

struct HfExportOptions {
  std::string dtype = "float32";         // float32 | bfloat16 | float16
  uint64_t max_shard_bytes = uint64_t{5} << 30;  // transformers' default of 5 GB shards
  // A Hugging Face directory the model came from (model.init_from), or "": its config.json's
  // other keys (token ids, ...), generation_config.json and tokenizer files are carried through.
  std::string source_directory;
};

// config.json text for `config`: the source config.json (if any) with every architecture key
// overwritten from `config`, plus architectures, model_type and torch_dtype.
std::string hf_config_json(const configs::ModelConfig& config, const std::string& torch_dtype,
                           const std::string& source_config_json = "");

// Writes a complete Hugging Face directory: safetensors (sharded by size, with index),
// config.json, generation_config.json (the source's, else one naming the model's defaults),
// and the source's tokenizer files. Creates `directory`; refuses one that already holds a
// config.json or weights (nothing is overwritten). Every file is written atomically.
void write_hf_directory(const std::string& directory,
                        const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                        const configs::ModelConfig& config, const HfExportOptions& options);

}  // namespace chunkflow::models
