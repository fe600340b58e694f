// chunkflow-export --checkpoint DIR --output HF_DIR [--dtype bfloat16] [--max-shard-mb 5000]
//
// Turns a ChunkFlow checkpoint (written by any dp/cp/pp layout) into a Hugging Face model
// directory: safetensors sharded by size with their index, config.json, generation_config.json,
// and the tokenizer files the run recorded (a run initialized from a Hugging Face directory keeps
// them in its checkpoints). Every shard is verified against the manifest's CRC-32C first; the
// output directory must not already hold a model.
#include <cstdio>
#include <string>
#include <vector>

#include "configs/config_loader.h"
#include "core/command_line.h"
#include "core/error.h"
#include "core/file_io.h"
#include "core/logging.h"
#include "core/strings.h"
#include "models/hugging_face.h"
#include "models/mixed_precision.h"
#include "trainer/checkpoint.h"

int main(int argc, char** argv) {
  using namespace chunkflow;
  try {
    std::string checkpoint_path, output, dtype = "float32";
    int64_t max_shard_mb = 5000;
    core::CommandLine command_line(
        "chunkflow-export",
        "Writes a Hugging Face model directory (safetensors + config.json + generation_config.json + tokenizer "
        "files) from a ChunkFlow checkpoint of any parallel layout.");
    command_line.add_string("checkpoint", &checkpoint_path,
                            "a checkpoint folder (step-NNNNNNNN) or a checkpoint directory (its newest is used)", true);
    command_line.add_string("output", &output, "new Hugging Face model directory to write", true);
    command_line.add_string("dtype", &dtype, "float32 | bfloat16 | float16 (default float32)");
    command_line.add_int("max-shard-mb", &max_shard_mb, "largest safetensors shard in MB (default 5000)");
    if (!command_line.parse(std::vector<std::string>(argv + 1, argv + argc))) return 0;
    const torch::ScalarType export_type = models::parse_dtype(dtype, "chunkflow-export --dtype");
    CF_CHECK(max_shard_mb >= 1, "chunkflow-export --max-shard-mb must be >= 1, got ", max_shard_mb);

    // A checkpoint root: take its newest checkpoint.
    std::string directory = checkpoint_path;
    if (!core::path_exists(directory + "/manifest.pb")) {
      const std::vector<std::string> saved = trainer::list_checkpoints(directory);
      CF_CHECK(!saved.empty(), "chunkflow-export --checkpoint ", checkpoint_path,
               ": neither a checkpoint (no manifest.pb) nor a directory holding checkpoints (step-NNNNNNNN)");
      directory = saved.back();
    }
    const auto manifest = trainer::read_manifest(directory);
    const configs::Config config = configs::parse_config(manifest.config_yaml(), directory + "/manifest.pb (config)");
    core::log_info("exporting ", directory, " (step ", manifest.step(), ", saved with dp ", manifest.layout().dp(),
                   " cp ", manifest.layout().cp(), " pp ", manifest.layout().pp(), ") to ", output, " as ", dtype);

    const auto tensors = trainer::read_checkpoint_tensors(
        directory, manifest, [](const std::string& name) { return name.rfind("model/", 0) == 0; });
    // Hugging Face's order (embedding, layers, norm, head); each name must be present.
    std::vector<std::pair<std::string, torch::Tensor>> named;
    for (const auto& [name, shape] : models::hf_tensor_shapes(config.model)) {
      const auto found = tensors.find("model/" + name);
      CF_CHECK(found != tensors.end(), "checkpoint ", directory, " has no tensor model/", name,
               " (a shard is missing from the manifest?)");
      named.emplace_back(name, found->second.to(export_type));
    }
    models::HfExportOptions options;
    options.dtype = dtype;
    options.max_shard_bytes = static_cast<uint64_t>(max_shard_mb) * 1000 * 1000;
    const std::string recorded = directory + "/hf";
    options.source_directory = core::path_exists(recorded) ? recorded : "";
    models::write_hf_directory(output, named, config.model, options);
    core::log_info("wrote ", output, ": ", named.size(), " tensors",
                   options.source_directory.empty() ? " (no tokenizer files recorded by the run)"
                                                    : ", tokenizer files and generation config of the source model");
    return 0;
  } catch (const core::Error& error) {
    core::log_error(error.what());
    return 1;
  }
}
