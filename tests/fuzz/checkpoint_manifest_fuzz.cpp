// Fuzzes the checkpoint manifest reader (trainer::read_manifest) and what resume does with a
// manifest it accepted: parse the saved config, verify each shard's name, size and CRC-32C, read
// the shards' tensors.
//
// Built twice (tests/fuzz/CMakeLists.txt):
//   checkpoint_manifest_fuzz          input = the whole manifest.pb (magic, CRC-32C, payload): the
//                                     framing checks, which reject almost every mutation.
//   checkpoint_manifest_payload_fuzz  input = the protobuf payload only; the target frames it
//                                     with the magic and the correct CRC-32C
//                                     (CHUNKFLOW_FUZZ_FRAME_PAYLOAD) so that the protobuf parse
//                                     and the validation behind it are reached.
// The checkpoint folder holds one real shard, stage-00.safetensors (written at start by
// models::save_safetensors), so a manifest can name a shard that exists. Contract: every step
// either throws core::Error or succeeds; any other exception, a crash or a sanitizer report is a
// bug.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "configs/config_loader.h"
#include "core/error.h"
#include "models/safetensors.h"
#include "tests/fuzz/fuzz_support.h"
#include "trainer/checkpoint.h"

namespace {

namespace fuzz = chunkflow::fuzz;
namespace trainer = chunkflow::trainer;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const torch::Tensor weight = torch::arange(6, torch::kFloat).reshape({2, 3});
  chunkflow::models::save_safetensors(fuzz::scratch_path("stage-00.safetensors"),
                                      {{"model/weight", weight}, {"optim/weight/step", torch::tensor(int64_t{3})}},
                                      {{"step", "3"}, {"pipeline_stage", "0"}});
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& directory = fuzz::scratch_dir();
  const std::string_view input(reinterpret_cast<const char*>(data), size);
#ifdef CHUNKFLOW_FUZZ_FRAME_PAYLOAD
  fuzz::write_bytes(fuzz::scratch_path("manifest.pb"), trainer::frame_manifest(input));
#else
  fuzz::write_bytes(fuzz::scratch_path("manifest.pb"), input);
#endif

  chunkflow::checkpoint::Manifest manifest;
  try {
    manifest = trainer::read_manifest(directory);
  } catch (const chunkflow::core::Error&) {
    return 0;  // a rejected manifest: the expected outcome for most inputs
  }
  // What load_checkpoint and chunkflow-export do with an accepted manifest, each step on its own
  // so that a rejection in one does not hide the others.
  try {
    chunkflow::configs::parse_config(manifest.config_yaml(), directory + "/manifest.pb (config)");
  } catch (const chunkflow::core::Error&) {
  }
  for (const auto& shard : manifest.shards()) {
    try {
      trainer::verify_shard(directory, shard);
    } catch (const chunkflow::core::Error&) {
    }
  }
  try {
    const auto tensors = trainer::read_checkpoint_tensors(directory, manifest);
    if (tensors.empty() && manifest.shards_size() > 0) {
      std::fprintf(stderr, "fuzz: verified shards yielded no tensors\n");
      std::abort();
    }
  } catch (const chunkflow::core::Error&) {
  }
  return 0;
}
