// Fuzzes the Hugging Face model directory reader: config.json (models::read_hf_config), the shard
// index model.safetensors.index.json (models::safetensors_weight_map) and the weight import into a
// model (models::load_hf_weights), i.e. what `model.init_from` and chunkflow-export read.
//
// Input: four fuzz_support.h sections, written into one model directory:
//   1. config.json
//   2. model.safetensors.index.json (an empty section: no index file)
//   3. model.safetensors (an empty section: no such file)
//   4. model-00001-of-00001.safetensors (the shard name the seed indexes use)
// Contract: read_hf_config either throws core::Error or returns a config that validates and whose
// tensor shapes are all positive; safetensors_weight_map either throws core::Error or maps every
// name to a file that holds a tensor of that name; load_hf_weights into a small model (the
// config.json one when it is small, else a fixed tiny one, so weight loading is reached even when
// config.json is rejected) either throws core::Error or leaves every parameter equal to its
// file's tensor. Any other exception (torch's c10::Error included), a crash or a sanitizer report
// is a bug.
#include <torch/torch.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "configs/model_config.h"
#include "core/error.h"
#include "models/hugging_face.h"
#include "models/safetensors.h"
#include "models/transformer.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

namespace fuzz = chunkflow::fuzz;
namespace models = chunkflow::models;

void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz: contract broken: %s\n", what);
    std::abort();
  }
}

// Writes `bytes` to the directory's `name`, or removes the file when the section is empty, so no
// file of the previous input leaks into this one.
void place(const std::string& name, std::string_view bytes) {
  const std::string path = fuzz::scratch_path(name);
  if (bytes.empty()) {
    fuzz::remove_file(path);
  } else {
    fuzz::write_bytes(path, bytes);
  }
}

// Parameters of every tensor hf_tensor_shapes lists, saturating at `limit` + 1 (shapes of a
// config.json that validated may still multiply past int64).
int64_t parameter_count(const chunkflow::configs::ModelConfig& config, int64_t limit) {
  int64_t total = 0;
  for (const auto& [name, shape] : models::hf_tensor_shapes(config)) {
    int64_t elements = 1;
    for (const int64_t dimension : shape) {
      require(dimension > 0, "a tensor of a validated config has a dimension <= 0");
      if (__builtin_mul_overflow(elements, dimension, &elements) || elements > limit) return limit + 1;
    }
    total += elements;
    if (total > limit) return limit + 1;
  }
  return total;
}

chunkflow::configs::ModelConfig tiny_config() {
  chunkflow::configs::ModelConfig config;
  config.family = "llama";
  config.vocab_size = 8;
  config.hidden_size = 4;
  config.intermediate_size = 8;
  config.num_hidden_layers = 1;
  config.num_attention_heads = 2;
  config.num_key_value_heads = 1;
  config.tie_word_embeddings = true;
  config.validate();
  return config;
}

bool same_values(const torch::Tensor& stored, const torch::Tensor& parameter) {
  const torch::Tensor converted = stored.to(parameter.scalar_type());
  return torch::equal(converted.isnan(), parameter.isnan()) &&
         torch::equal(torch::nan_to_num(converted), torch::nan_to_num(parameter));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  torch::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& directory = fuzz::scratch_dir();
  fuzz::Sections sections(data, size);
  place("config.json", sections.next());
  place("model.safetensors.index.json", sections.next());
  place("model.safetensors", sections.next());
  place("model-00001-of-00001.safetensors", sections.next());

  // Models of up to this many parameters are built and loaded (a few KiB; larger configs are
  // parsed and checked only: their weights could not fit in a fuzz input anyway).
  constexpr int64_t kLoadableParameters = 4096;
  chunkflow::configs::ModelConfig config = tiny_config();
  try {
    const chunkflow::configs::ModelConfig parsed = models::read_hf_config(directory);
    try {
      parsed.validate();
    } catch (const chunkflow::core::Error&) {
      require(false, "read_hf_config returned a config that does not validate");
    }
    if (parameter_count(parsed, kLoadableParameters) <= kLoadableParameters) config = parsed;
  } catch (const chunkflow::core::Error&) {
    // A rejected config.json: the tiny model still loads the weights below.
  }

  std::map<std::string, std::string> weight_map;
  try {
    weight_map = models::safetensors_weight_map(directory);
    for (const auto& [name, file] : weight_map) {
      require(models::SafetensorsFile(file).contains(name), "the weight map names a tensor its file does not hold");
    }
  } catch (const chunkflow::core::Error&) {
    weight_map.clear();
  }

  try {
    models::CausalLM model(config, models::ModelStage{}, /*init_seed=*/uint64_t{1});
    models::load_hf_weights(model, directory);
    torch::NoGradGuard no_grad;
    for (const auto& parameter : model->named_parameters(/*recurse=*/true)) {
      const auto found = weight_map.find(parameter.key());
      require(found != weight_map.end(), "load_hf_weights accepted a directory without one of the parameters");
      require(same_values(models::SafetensorsFile(found->second).load(parameter.key()), parameter.value()),
              "a loaded parameter differs from the tensor in its file");
    }
  } catch (const chunkflow::core::Error&) {
  }
  return 0;
}
