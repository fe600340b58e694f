// Checkpoints: one directory per saved step, written atomically, keyed by parameter name so any
// parallel layout can resume or export any other's.
//
//   <checkpoint.dir>/step-00000120/
//     stage-00.safetensors ...   one per pipeline stage: "model/<hf name>" parameters,
//                                "optim/<hf name>/{exp_avg,exp_avg_sq,step}" AdamW state,
//                                "rng/torch_cpu"; written by the stage's dp = cp = 0 rank
//                                (dp and cp replicas hold identical values)
//     manifest.pb                protobuf (trainer/checkpoint.proto): step, layout, resolved
//                                config, sampler position, dataset fingerprint, run counters
//                                (skipped steps), and the size and CRC-32C of every shard
//
// manifest.pb is framed (magic, CRC-32C, payload) so a corrupt manifest is detected too.
// Commit protocol: shards go to a hidden `.step-N.partial` directory (each file fsynced; each
// writer computes its shard's CRC-32C from the bytes it writes and all-reduces size and CRC to
// rank 0, which only stats the files), rank 0 writes the manifest, renames the directory into place and fsyncs the parent;
// only then are checkpoints beyond checkpoint.keep_last deleted. A crash at any point leaves the
// previous checkpoints untouched and no directory that resume would pick.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "checkpoint.pb.h"
#include "configs/config.h"
#include "data/indexed_dataset.h"
#include "data/sampler.h"
#include "models/transformer.h"
#include "parallel/communicator.h"
#include "parallel/device_mesh.h"

namespace chunkflow::trainer {

inline constexpr uint32_t kCheckpointFormatVersion = 1;

// "step-00000120" for step 120.
std::string checkpoint_name(int64_t step);

// Dataset identity stored with the sampler position.
checkpoint::DatasetFingerprint dataset_fingerprint(const data::IndexedDataset& dataset, const std::string& path);

// What one save needs from the trainer.
struct CheckpointContents {
  int64_t step = 0;
  models::CausalLM* model = nullptr;
  torch::optim::AdamW* optimizer = nullptr;
  data::SamplerPosition sampler;
  checkpoint::DatasetFingerprint dataset;
  const configs::Config* config = nullptr;
  checkpoint::Counters counters;
};

// Saves `contents` under config.checkpoint_dir() and prunes old checkpoints. Collective over
// `world` (nullptr: a single process); `mesh` is null for a single rank. Returns the checkpoint's
// path. Throws core::Error naming the directory and the OS error when it cannot be written (a
// full disk, no permission); the previous checkpoints stay intact.
std::string save_checkpoint(const CheckpointContents& contents, parallel::Communicator* world,
                            parallel::DeviceMesh* mesh);

// The checkpoint directories under `checkpoint_dir` that have a manifest, oldest first.
std::vector<std::string> list_checkpoints(const std::string& checkpoint_dir);

// The checkpoint checkpoint.resume asks for: "" for a fresh start (resume "", or "auto" with no
// checkpoint yet); the newest checkpoint for "auto"; else the given path (an error when it is not
// a checkpoint directory).
std::string resolve_resume(const configs::Config& config);

// The bytes of manifest.pb for a serialized Manifest `payload`: the 8-byte magic "CFCKPT01", the
// payload's CRC-32C (u32 little-endian), the payload. read_manifest checks all three.
std::string frame_manifest(std::string_view payload);

// Reads `directory`/manifest.pb. Throws core::Error naming the file when it is missing, corrupt or
// of another format version.
checkpoint::Manifest read_manifest(const std::string& directory);

// Checks a shard file against its manifest entry (exists, size, CRC-32C). Throws core::Error
// naming the file, both values, and what to do.
void verify_shard(const std::string& directory, const checkpoint::Shard& shard);

// Every tensor of the checkpoint's shards by name ("model/...", "optim/...", "rng/..."), each
// shard verified first. `wanted` filters names (all when empty).
std::map<std::string, torch::Tensor> read_checkpoint_tensors(
    const std::string& directory, const checkpoint::Manifest& manifest,
    const std::function<bool(const std::string&)>& wanted = {});

// Restores the model's stage parameters, the AdamW state and the torch RNG from `directory`,
// whatever layout wrote it. Checks first that the checkpoint's model config equals config.model
// (an error listing every key that differs), that the data settings the sampler position depends
// on are unchanged and that the dataset is the one it was taken on. Returns the manifest
// (step, sampler position).
checkpoint::Manifest load_checkpoint(const std::string& directory, const configs::Config& config,
                                     const data::IndexedDataset& dataset, models::CausalLM& model,
                                     torch::optim::AdamW& optimizer);

}  // namespace chunkflow::trainer
