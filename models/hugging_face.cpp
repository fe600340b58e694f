// Hugging Face config.json <-> ModelConfig, weight import into a (stage of a) model, and export of
// a directory transformers can load.
#include "models/hugging_face.h"

#include <torch/torch.h>

#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "configs/field_texts.h"
#include "core/error.h"
#include "core/file_io.h"
#include "core/strings.h"
#include "models/mixed_precision.h"
#include "models/safetensors.h"

namespace chunkflow::models {
namespace {

using Json = nlohmann::ordered_json;


struct ConfigReader {
  const std::string& path;
  const Json& json;

  const Json* find(const char* key) const {
    const auto found = json.find(key);
    return found == json.end() || found->is_null() ? nullptr : &*found;
  }
  int64_t integer(const char* key) const {
    const Json* value = find(key);
    CF_CHECK(value != nullptr, path, ": required key \"", key, "\" is missing");
    CF_CHECK(value->is_number_integer(), path, ": \"", key, "\" must be an integer, got ", value->dump());
    return value->get<int64_t>();
  }
  int64_t integer_or(const char* key, int64_t fallback) const { return find(key) ? integer(key) : fallback; }
  double number_or(const char* key, double fallback) const {
    const Json* value = find(key);
    if (value == nullptr) return fallback;
    CF_CHECK(value->is_number(), path, ": \"", key, "\" must be a number, got ", value->dump());
    return value->get<double>();
  }
  bool boolean_or(const char* key, bool fallback) const {
    const Json* value = find(key);
    if (value == nullptr) return fallback;
    CF_CHECK(value->is_boolean(), path, ": \"", key, "\" must be true or false, got ", value->dump());
    return value->get<bool>();
  }
  std::string string_or(const char* key, const std::string& fallback) const {
    const Json* value = find(key);
    if (value == nullptr) return fallback;
    CF_CHECK(value->is_string(), path, ": \"", key, "\" must be a string, got ", value->dump());
    return value->get<std::string>();
  }
};

Json parse_json_file(const std::string& path) {
  CF_CHECK(core::path_exists(path), path, ": not found");
  try {
    return Json::parse(core::read_file(path));
  } catch (const nlohmann::json::exception& error) {
    CF_FAIL(path, ": not valid JSON (", error.what(), ")");
  }
}

torch::ScalarType export_dtype(const std::string& dtype) { return parse_dtype(dtype, "export dtype"); }

std::string shape_text(const std::vector<int64_t>& shape) {
  std::ostringstream text;
  text << "[";
  for (size_t index = 0; index < shape.size(); ++index) text << (index ? ", " : "") << shape[index];
  text << "]";
  return text.str();
}

// At most `limit` names, then "... and N more".
std::string name_list(const std::vector<std::string>& names, size_t limit = 8) {
  std::string text;
  for (size_t index = 0; index < names.size() && index < limit; ++index) text += (index ? ", " : "") + names[index];
  if (names.size() > limit) text += core::str_cat(" ... and ", names.size() - limit, " more");
  return text;
}

bool ignorable_extra(const std::string& name, const configs::ModelConfig& config) {
  // Older checkpoints store the rotary frequencies; a tied model may still carry the head.
  if (name.size() >= 9 && name.compare(name.size() - 9, 9, ".inv_freq") == 0) return true;
  return config.tie_word_embeddings && name == "lm_head.weight";
}

// The keys each rope_type may carry in a RoPE dictionary, beside rope_type/type and rope_theta.
const std::map<std::string, std::set<std::string>>& rope_keys_by_type() {
  static const std::map<std::string, std::set<std::string>> keys = {
      {"default", {}},
      {"linear", {"factor"}},
      {"llama3", {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}},
      {"yarn",
       {"factor", "attention_factor", "beta_fast", "beta_slow", "original_max_position_embeddings", "mscale",
        "mscale_all_dim", "truncate"}}};
  return keys;
}

// A RoPE dictionary (transformers 5's "rope_parameters", or 4's "rope_scaling"): its scaling, and
// its rope_theta (or `theta` where it has none). Keys its rope_type does not have are errors:
// they would change the frequencies in a way this build does not implement.
kernels::RopeScaling read_rope_dictionary(const std::string& path, const char* key, const Json& rope, double& theta) {
  CF_CHECK(rope.is_object(), path, ": \"", key, "\" must be an object, got ", rope.dump());
  const ConfigReader reader{path, rope};
  kernels::RopeScaling scaling;
  // "type" is the name transformers 4 accepted before "rope_type".
  scaling.type = reader.string_or("rope_type", reader.string_or("type", "default"));
  const auto known = rope_keys_by_type().find(scaling.type);
  CF_CHECK(known != rope_keys_by_type().end(), path, ": \"", key, "\" = ", rope.dump(), ": rope_type \"", scaling.type,
           "\" is not supported; supported are ", kernels::supported_rope_types(),
           " (dynamic and longrope recompute the frequencies from each forward call's longest position, so a "
           "token's encoding would depend on how its batch is cut)");
  for (const auto& [name, value] : rope.items()) {
    const bool understood = name == "rope_type" || name == "type" || name == "rope_theta" || known->second.count(name);
    CF_CHECK(understood || value.is_null(), path, ": \"", key, "\" has \"", name, "\" = ", value.dump(), ", which ",
             scaling.type, " RoPE does not have (rotary on every dimension; its keys are rope_type, rope_theta",
             known->second.empty() ? "" : ", ",
             core::join(std::vector<std::string>(known->second.begin(), known->second.end()), ", "), ")");
  }
  theta = reader.number_or("rope_theta", theta);
  const kernels::RopeScaling defaults;
  scaling.factor = reader.number_or("factor", defaults.factor);
  scaling.original_max_position_embeddings =
      reader.integer_or("original_max_position_embeddings", defaults.original_max_position_embeddings);
  scaling.low_freq_factor = reader.number_or("low_freq_factor", defaults.low_freq_factor);
  scaling.high_freq_factor = reader.number_or("high_freq_factor", defaults.high_freq_factor);
  scaling.beta_fast = reader.number_or("beta_fast", defaults.beta_fast);
  scaling.beta_slow = reader.number_or("beta_slow", defaults.beta_slow);
  scaling.attention_factor = reader.number_or("attention_factor", defaults.attention_factor);
  scaling.mscale = reader.number_or("mscale", defaults.mscale);
  scaling.mscale_all_dim = reader.number_or("mscale_all_dim", defaults.mscale_all_dim);
  scaling.truncate = reader.boolean_or("truncate", defaults.truncate);
  return scaling;
}

void set_rope_scaling(configs::ModelConfig& config, const kernels::RopeScaling& scaling) {
  config.rope_type = scaling.type;
  config.rope_factor = scaling.factor;
  config.rope_original_max_position_embeddings = scaling.original_max_position_embeddings;
  config.rope_low_freq_factor = scaling.low_freq_factor;
  config.rope_high_freq_factor = scaling.high_freq_factor;
  config.rope_beta_fast = scaling.beta_fast;
  config.rope_beta_slow = scaling.beta_slow;
  config.rope_attention_factor = scaling.attention_factor;
  config.rope_mscale = scaling.mscale;
  config.rope_mscale_all_dim = scaling.mscale_all_dim;
  config.rope_truncate = scaling.truncate;
}

// rope_theta and the RoPE scaling from either generation of config.json: transformers 4 writes
// rope_theta at the top level and the scaling in "rope_scaling", 5 both inside "rope_parameters"
// (and reads the top-level rope_theta into it when that lacks one).
void read_rope(const ConfigReader& reader, configs::ModelConfig& config) {
  const double top_level = reader.number_or("rope_theta", 10000.0);
  double theta = top_level;
  kernels::RopeScaling scaling;
  if (const Json* dictionary = reader.find("rope_scaling")) {
    scaling = read_rope_dictionary(reader.path, "rope_scaling", *dictionary, theta);
  }
  if (const Json* dictionary = reader.find("rope_parameters")) {
    const kernels::RopeScaling parameters = read_rope_dictionary(reader.path, "rope_parameters", *dictionary, theta);
    CF_CHECK(scaling.type == "default" || parameters.type == "default" || scaling == parameters, reader.path,
             ": \"rope_scaling\" = ", reader.find("rope_scaling")->dump(), " and \"rope_parameters\" = ",
             dictionary->dump(), " describe different RoPE scalings; which one the model was trained with is unknown");
    if (parameters.type != "default") scaling = parameters;
    CF_CHECK(!reader.find("rope_theta") || theta == top_level, reader.path, ": \"rope_theta\" = ", top_level,
             " and \"rope_parameters\".rope_theta = ", theta, " disagree; which one the model was trained with is unknown");
  }
  config.rope_theta = theta;
  set_rope_scaling(config, scaling);
}

// The RoPE scaling keys of `config` as transformers writes them (its rope_type's keys only).
Json rope_dictionary(const configs::ModelConfig& config) {
  Json rope = {{"rope_type", config.rope_type}};
  if (config.rope_type == "default") return rope;
  rope["factor"] = config.rope_factor;
  if (config.rope_original_max_position_embeddings > 0) {
    rope["original_max_position_embeddings"] = config.rope_original_max_position_embeddings;
  }
  if (config.rope_type == "llama3") {
    rope["low_freq_factor"] = config.rope_low_freq_factor;
    rope["high_freq_factor"] = config.rope_high_freq_factor;
  } else if (config.rope_type == "yarn") {
    rope["beta_fast"] = config.rope_beta_fast;
    rope["beta_slow"] = config.rope_beta_slow;
    if (config.rope_attention_factor > 0) rope["attention_factor"] = config.rope_attention_factor;
    if (config.rope_mscale > 0) rope["mscale"] = config.rope_mscale;
    if (config.rope_mscale_all_dim > 0) rope["mscale_all_dim"] = config.rope_mscale_all_dim;
    if (!config.rope_truncate) rope["truncate"] = false;  // the key only newer transformers know
  }
  return rope;
}

}  // namespace

configs::ModelConfig read_hf_config(const std::string& directory) {
  const std::string path = directory + "/config.json";
  const Json json = parse_json_file(path);
  CF_CHECK(json.is_object(), path, ": must be a JSON object");
  const ConfigReader reader{path, json};

  configs::ModelConfig config;
  std::string architecture;
  if (const Json* architectures = reader.find("architectures")) {
    CF_CHECK(architectures->is_array() && !architectures->empty() && (*architectures)[0].is_string(), path,
             ": \"architectures\" must be a list of class names, got ", architectures->dump());
    architecture = (*architectures)[0].get<std::string>();
  }
  const std::string model_type = reader.string_or("model_type", "");
  if (architecture == "LlamaForCausalLM" || (architecture.empty() && model_type == "llama")) {
    config.family = "llama";
  } else if (architecture == "Qwen2ForCausalLM" || (architecture.empty() && model_type == "qwen2")) {
    config.family = "qwen2";
  } else {
    CF_FAIL(path, ": architectures = [\"", architecture, "\"], model_type = \"", model_type,
            "\": supported are LlamaForCausalLM (llama) and Qwen2ForCausalLM (qwen2)");
  }

  config.vocab_size = reader.integer("vocab_size");
  config.hidden_size = reader.integer("hidden_size");
  config.intermediate_size = reader.integer("intermediate_size");
  config.num_hidden_layers = reader.integer("num_hidden_layers");
  config.num_attention_heads = reader.integer("num_attention_heads");
  config.num_key_value_heads = reader.integer_or("num_key_value_heads", config.num_attention_heads);
  config.head_dim = reader.integer_or("head_dim", 0);
  if (config.head_dim == config.hidden_size / std::max<int64_t>(config.num_attention_heads, 1)) config.head_dim = 0;
  config.rms_norm_eps = reader.number_or("rms_norm_eps", 1e-6);
  read_rope(reader, config);
  config.max_position_embeddings = reader.integer_or("max_position_embeddings", config.max_position_embeddings);
  config.tie_word_embeddings = reader.boolean_or("tie_word_embeddings", false);
  config.initializer_range = reader.number_or("initializer_range", 0.02);
  // Qwen2 always has q/k/v biases (and no o_proj bias); Llama's attention_bias covers all four.
  config.attention_bias = config.family == "qwen2" ? true : reader.boolean_or("attention_bias", false);

  // Features that would change the math and are not implemented: refuse rather than differ
  // (RoPE types other than those of kernels/rope_frequencies.h are refused by read_rope).
  const std::string activation = reader.string_or("hidden_act", "silu");
  CF_CHECK(activation == "silu", path, ": \"hidden_act\" = \"", activation, "\" is not supported (SwiGLU with silu only)");
  CF_CHECK(!reader.boolean_or("mlp_bias", false), path, ": \"mlp_bias\" = true is not supported (MLP without biases only)");
  if (config.family == "qwen2") {
    CF_CHECK(!reader.boolean_or("use_sliding_window", false), path,
             ": \"use_sliding_window\" = true is not supported (full causal attention only)");
  }
  config.init_from = directory;
  try {
    config.validate();
  } catch (const core::Error& error) {
    CF_FAIL(path, ": describes a model this build cannot hold: ", error.what());
  }
  return config;
}

configs::ModelConfig merge_hf_config(const configs::ModelConfig& run_model) {
  configs::ModelConfig merged;
  try {
    merged = read_hf_config(run_model.init_from);
  } catch (const core::Error& error) {
    CF_FAIL("model.init_from = '", run_model.init_from, "': ", error.what());
  }
  const auto run = configs::field_texts(run_model);
  const auto defaults = configs::field_texts(configs::ModelConfig{});
  const auto from_file = configs::field_texts(merged);
  // Context extension: a run that sets a RoPE scaling replaces config.json's (and may set the new
  // max_position_embeddings); the export writes it back.
  const bool extends_context = run_model.rope_type != "default";
  for (const auto& [key, value] : run) {
    if (key == "init_from" || key == "dtype" || key == "initializer_range") continue;
    if (extends_context && (key.rfind("rope_", 0) == 0 && key != "rope_theta")) continue;
    if (extends_context && key == "max_position_embeddings") continue;
    CF_CHECK(value == defaults.at(key) || value == from_file.at(key), "model.", key, " = ", value,
             " in the run config, but ", run_model.init_from, "/config.json says ", from_file.at(key),
             "; with model.init_from the architecture comes from config.json: remove model.", key,
             " or make it agree");
  }
  merged.dtype = run_model.dtype;
  merged.initializer_range = run_model.initializer_range;
  if (extends_context) {
    const double theta = merged.rope_theta;
    set_rope_scaling(merged, rope_scaling_of(run_model));
    merged.rope_theta = theta;
    if (run_model.max_position_embeddings != configs::ModelConfig{}.max_position_embeddings) {
      merged.max_position_embeddings = run_model.max_position_embeddings;
    }
    merged.validate();
  }
  return merged;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> hf_tensor_shapes(const configs::ModelConfig& config) {
  const int64_t hidden = config.hidden_size;
  const int64_t head_dim = config.effective_head_dim();
  const int64_t q_width = config.num_attention_heads * head_dim;
  const int64_t kv_width = config.num_key_value_heads * head_dim;
  const bool qkv_bias = config.attention_bias;
  const bool o_bias = config.attention_bias && config.family == "llama";
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes;
  shapes.push_back({"model.embed_tokens.weight", {config.vocab_size, hidden}});
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    const std::string prefix = core::str_cat("model.layers.", layer, ".");
    shapes.push_back({prefix + "self_attn.q_proj.weight", {q_width, hidden}});
    if (qkv_bias) shapes.push_back({prefix + "self_attn.q_proj.bias", {q_width}});
    shapes.push_back({prefix + "self_attn.k_proj.weight", {kv_width, hidden}});
    if (qkv_bias) shapes.push_back({prefix + "self_attn.k_proj.bias", {kv_width}});
    shapes.push_back({prefix + "self_attn.v_proj.weight", {kv_width, hidden}});
    if (qkv_bias) shapes.push_back({prefix + "self_attn.v_proj.bias", {kv_width}});
    shapes.push_back({prefix + "self_attn.o_proj.weight", {hidden, q_width}});
    if (o_bias) shapes.push_back({prefix + "self_attn.o_proj.bias", {hidden}});
    shapes.push_back({prefix + "mlp.gate_proj.weight", {config.intermediate_size, hidden}});
    shapes.push_back({prefix + "mlp.up_proj.weight", {config.intermediate_size, hidden}});
    shapes.push_back({prefix + "mlp.down_proj.weight", {hidden, config.intermediate_size}});
    shapes.push_back({prefix + "input_layernorm.weight", {hidden}});
    shapes.push_back({prefix + "post_attention_layernorm.weight", {hidden}});
  }
  shapes.push_back({"model.norm.weight", {hidden}});
  if (!config.tie_word_embeddings) shapes.push_back({"lm_head.weight", {config.vocab_size, hidden}});
  return shapes;
}

void load_hf_weights(CausalLM& model, const std::string& directory) {
  const configs::ModelConfig& config = model->config();
  const std::map<std::string, std::string> weight_map = safetensors_weight_map(directory);

  std::set<std::string> known;
  for (const auto& [name, shape] : hf_tensor_shapes(config)) known.insert(name);
  std::vector<std::string> unexpected;
  for (const auto& [name, file] : weight_map) {
    if (!known.count(name) && !ignorable_extra(name, config)) unexpected.push_back(name);
  }
  CF_CHECK(unexpected.empty(), "model directory ", directory, ": ", unexpected.size(),
           " tensor(s) the configured model does not have: ", name_list(unexpected),
           " (a different architecture, or config.json does not match the weights)");

  const auto parameters = model->named_parameters(/*recurse=*/true);
  std::vector<std::string> missing;
  for (const auto& parameter : parameters) {
    if (!weight_map.count(parameter.key())) missing.push_back(parameter.key());
  }
  CF_CHECK(missing.empty(), "model directory ", directory, ": ", missing.size(),
           " tensor(s) the model needs are missing: ", name_list(missing));

  // Open each shard once, loading only this stage's tensors.
  std::map<std::string, std::vector<std::string>> by_shard;
  for (const auto& parameter : parameters) by_shard[weight_map.at(parameter.key())].push_back(parameter.key());
  torch::NoGradGuard no_grad;
  const TensorParallel& tp = model->tensor_parallel();
  for (const auto& [file, names] : by_shard) {
    const SafetensorsFile shard(file);
    for (const auto& name : names) {
      torch::Tensor target = parameters[name];
      const SafetensorsEntry& entry = shard.entry(name);
      // Under tensor parallelism this rank keeps its slice of the whole tensor.
      const std::vector<int64_t> whole_shape = tensor_parallel_whole_shape(target.sizes().vec(), name, tp.size);
      CF_CHECK(entry.shape == whole_shape, file, ": tensor '", name, "' has shape ", shape_text(entry.shape),
               " but the model (from config.json) needs ", shape_text(whole_shape));
      CF_CHECK(entry.dtype == torch::kFloat || entry.dtype == torch::kBFloat16 || entry.dtype == torch::kHalf ||
                   entry.dtype == torch::kDouble,
               file, ": tensor '", name, "' has dtype ", entry.dtype, "; weights must be floating point");
      target.copy_(tensor_parallel_slice(shard.load(name), name, tp.rank, tp.size).to(target.scalar_type()));
    }
  }
}

std::vector<std::pair<std::string, torch::Tensor>> hf_named_tensors(CausalLM& model, const std::string& dtype) {
  const torch::ScalarType scalar_type = export_dtype(dtype);
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& parameter : model->named_parameters(/*recurse=*/true)) {
    tensors.emplace_back(parameter.key(), parameter.value().detach().to(torch::kCPU).to(scalar_type).contiguous());
  }
  return tensors;
}

std::string hf_config_json(const configs::ModelConfig& config, const std::string& torch_dtype,
                           const std::string& source_config_json) {
  Json json = Json::object();
  if (!source_config_json.empty()) {
    try {
      json = Json::parse(source_config_json);
    } catch (const nlohmann::json::exception& error) {
      CF_FAIL("source config.json is not valid JSON (", error.what(), ")");
    }
  }
  const bool llama = config.family == "llama";
  json["architectures"] = {llama ? "LlamaForCausalLM" : "Qwen2ForCausalLM"};
  json["model_type"] = llama ? "llama" : "qwen2";
  json["vocab_size"] = config.vocab_size;
  json["hidden_size"] = config.hidden_size;
  json["intermediate_size"] = config.intermediate_size;
  json["num_hidden_layers"] = config.num_hidden_layers;
  json["num_attention_heads"] = config.num_attention_heads;
  json["num_key_value_heads"] = config.num_key_value_heads;
  json["head_dim"] = config.effective_head_dim();
  json["hidden_act"] = "silu";
  json["rms_norm_eps"] = config.rms_norm_eps;
  // Both generations of transformers: 4 reads the top-level rope_theta and "rope_scaling", 5
  // "rope_parameters" (where 5 aliases "rope_scaling": without scaling that key is left out, as
  // a null one could clear it; with scaling both carry the same dictionary).
  json["rope_theta"] = config.rope_theta;
  Json rope = rope_dictionary(config);
  json.erase("rope_scaling");
  if (config.rope_type != "default") json["rope_scaling"] = rope;
  rope["rope_theta"] = config.rope_theta;
  json["rope_parameters"] = rope;
  json["max_position_embeddings"] = config.max_position_embeddings;
  json["tie_word_embeddings"] = config.tie_word_embeddings;
  json["initializer_range"] = config.initializer_range;
  json["torch_dtype"] = torch_dtype;
  if (llama) {
    json["attention_bias"] = config.attention_bias;
    json["mlp_bias"] = false;
  } else {
    json["use_sliding_window"] = false;
  }
  return json.dump(2) + "\n";
}

void write_hf_directory(const std::string& directory,
                        const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                        const configs::ModelConfig& config, const HfExportOptions& options) {
  export_dtype(options.dtype);  // validates the name
  for (const char* existing : {"config.json", "model.safetensors", "model.safetensors.index.json"}) {
    CF_CHECK(!core::path_exists(directory + "/" + existing), "export directory ", directory, " already holds ",
             existing, "; choose a new directory (nothing is overwritten)");
  }
  core::make_directories(directory);

  // Every tensor the whole model has, nothing else, each with its configured shape.
  std::map<std::string, std::vector<int64_t>> expected;
  for (const auto& [name, shape] : hf_tensor_shapes(config)) expected[name] = shape;
  std::set<std::string> seen;
  for (const auto& [name, tensor] : tensors) {
    const auto found = expected.find(name);
    CF_CHECK(found != expected.end(), "export: tensor '", name, "' is not part of the configured model");
    CF_CHECK(found->second == tensor.sizes().vec(), "export: tensor '", name, "' has shape ",
             shape_text(tensor.sizes().vec()), ", the config says ", shape_text(found->second));
    seen.insert(name);
  }
  std::vector<std::string> missing;
  for (const auto& [name, shape] : expected) {
    if (!seen.count(name)) missing.push_back(name);
  }
  CF_CHECK(missing.empty(), "export: ", missing.size(), " tensor(s) missing: ", name_list(missing));

  save_safetensors_sharded(directory, tensors, options.max_shard_bytes, {{"format", "pt"}});

  std::string source_config;
  if (!options.source_directory.empty() && core::path_exists(options.source_directory + "/config.json")) {
    source_config = core::read_file(options.source_directory + "/config.json");
  }
  core::write_file_atomic(directory + "/config.json", hf_config_json(config, options.dtype, source_config));

  const std::string source_generation = options.source_directory + "/generation_config.json";
  if (!options.source_directory.empty() && core::path_exists(source_generation)) {
    core::write_file_atomic(directory + "/generation_config.json", core::read_file(source_generation));
  } else {
    Json generation = {{"_from_model_config", true}};
    if (!source_config.empty()) {
      const Json source = Json::parse(source_config);
      for (const char* key : {"bos_token_id", "eos_token_id", "pad_token_id"}) {
        if (source.contains(key)) generation[key] = source[key];
      }
    }
    core::write_file_atomic(directory + "/generation_config.json", generation.dump(2) + "\n");
  }
  if (!options.source_directory.empty()) {
    for (const std::string file : kHfCarriedFiles) {
      if (file == "config.json" || file == "generation_config.json") continue;  // written above
      const std::string source = options.source_directory + "/" + file;
      if (core::path_exists(source)) core::write_file_atomic(directory + "/" + file, core::read_file(source));
    }
  }
}

}  // namespace chunkflow::models
