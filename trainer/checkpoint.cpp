// Checkpoint save (atomic directory commit), listing, verification and resume; see checkpoint.h.
#include "trainer/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <limits>
#include <map>
#include <mutex>

#include "configs/config_loader.h"
#include "core/crc32c.h"
#include "configs/field_texts.h"
#include "core/error.h"
#include "core/file_io.h"
#include "core/logging.h"
#include "core/strings.h"
#include "models/hugging_face.h"
#include "models/safetensors.h"

namespace chunkflow::trainer {
namespace {

// The whole tensor of parameter `name` (or of its AdamW moments) from every tp rank's slice: an
// all-gather along the dimension tensor parallelism splits (models/tensor_parallel.h). Collective
// over `tensor_group` for split parameters; `slice` itself otherwise.
torch::Tensor whole_tensor(const std::string& name, const torch::Tensor& slice, parallel::Communicator* tensor_group) {
  const int dim = models::tensor_parallel_dim(name);
  if (tensor_group == nullptr || tensor_group->size() == 1 || dim < 0) return slice;
  if (dim == 0) return tensor_group->all_gather(slice.contiguous());
  return tensor_group->all_gather(slice.transpose(0, 1).contiguous()).transpose(0, 1).contiguous();
}

constexpr const char* kManifestFile = "manifest.pb";
// manifest.pb = this 8-byte magic, the payload's CRC-32C (u32 little-endian), the serialized
// Manifest. Protobuf parsing accepts many corruptions silently; the checksum does not.
constexpr char kManifestMagic[8] = {'C', 'F', 'C', 'K', 'P', 'T', '0', '1'};

std::string shard_file_name(int stage) {
  char name[32];
  std::snprintf(name, sizeof(name), "stage-%02d.safetensors", stage);
  return name;
}

// Parses "step-<digits>"; -1 for any other name.
int64_t step_of(const std::string& name) {
  if (name.rfind("step-", 0) != 0 || name.size() == 5) return -1;
  int64_t step = 0;
  for (size_t index = 5; index < name.size(); ++index) {
    if (name[index] < '0' || name[index] > '9') return -1;
    // A name past int64 is no checkpoint of ours (and must not overflow).
    if (step > (std::numeric_limits<int64_t>::max() - (name[index] - '0')) / 10) return -1;
    step = step * 10 + (name[index] - '0');
  }
  return step;
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm parts{};
  gmtime_r(&now, &parts);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &parts);
  return text;
}

void fsync_directory(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY);
  CF_CHECK(fd >= 0, "cannot open directory ", path, " to sync it: ", std::strerror(errno));
  const int status = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  CF_CHECK(status == 0, "cannot sync directory ", path, ": ", std::strerror(error));
}

void rename_or_fail(const std::string& from, const std::string& to) {
  CF_CHECK(std::rename(from.c_str(), to.c_str()) == 0, "cannot rename ", from, " to ", to, ": ", std::strerror(errno));
}

void remove_tree(const std::string& path) {
  std::error_code error;
  std::filesystem::remove_all(path, error);
  if (error) core::log_warn("could not delete ", path, ": ", error.message());
}

uint32_t file_crc32c(const std::string& path, uint64_t* bytes) {
  const core::MappedFile file(path);
  *bytes = file.size();
  return file.size() == 0 ? 0 : core::crc32c(file.data(), file.size());
}


// "model.hidden_size: checkpoint 64, run 128" for every differing key except `ignored`.
template <typename Section>
std::vector<std::string> differences(const char* section_name, const Section& saved, const Section& current,
                                     const std::vector<std::string>& ignored) {
  const auto saved_texts = configs::field_texts(saved);
  const auto current_texts = configs::field_texts(current);
  std::vector<std::string> lines;
  for (const auto& [key, value] : saved_texts) {
    if (std::find(ignored.begin(), ignored.end(), key) != ignored.end()) continue;
    if (current_texts.at(key) != value) {
      lines.push_back(core::str_cat(section_name, ".", key, ": checkpoint ", value, ", run ", current_texts.at(key)));
    }
  }
  return lines;
}

}  // namespace

std::string frame_manifest(std::string_view payload) {
  std::string bytes(kManifestMagic, sizeof(kManifestMagic));
  const uint32_t crc = core::crc32c(payload.data(), payload.size());
  for (int index = 0; index < 4; ++index) bytes.push_back(static_cast<char>((crc >> (8 * index)) & 0xff));
  bytes.append(payload);
  return bytes;
}

std::string checkpoint_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step-%08lld", static_cast<long long>(step));
  return name;
}

checkpoint::DatasetFingerprint dataset_fingerprint(const data::IndexedDataset& dataset, const std::string& path) {
  checkpoint::DatasetFingerprint fingerprint;
  fingerprint.set_path(path);
  fingerprint.set_sequences(dataset.size());
  fingerprint.set_tokens(dataset.total_tokens());
  uint64_t bytes = 0;
  fingerprint.set_index_crc32c(file_crc32c(data::idx_path(path), &bytes));
  return fingerprint;
}

namespace {

// Writes the checkpoint into root/.<name>.partial and renames it to root/<name>; see
// save_checkpoint, which adds the context to any error.
void write_checkpoint(const CheckpointContents& contents, parallel::Communicator* world, parallel::DeviceMesh* mesh,
                      const std::string& root, const std::string& name, const std::string& partial_dir) {
  const configs::Config& config = *contents.config;
  const std::string final_dir = root + "/" + name;
  const bool leader = world == nullptr || world->rank() == 0;
  const auto barrier = [&] {
    if (world != nullptr) world->barrier();
  };

  // A partial directory left by a crash is garbage: start clean.
  if (leader) {
    core::make_directories(root);
    remove_tree(partial_dir);
    core::make_directories(partial_dir);
  }
  barrier();

  // The dp = cp = 0 ranks of each stage assemble whole tensors from their tp slices; the first of
  // them writes the stage's shard.
  const int stage = mesh != nullptr ? mesh->coordinates().pp : 0;
  torch::Tensor shard_sums = torch::zeros({config.parallel.pp, 2}, torch::kLong);  // [stage] = (bytes, crc32c)
  const bool assembles = mesh == nullptr || (mesh->coordinates().dp == 0 && mesh->coordinates().cp == 0);
  const bool writes_shard = assembles && (mesh == nullptr || mesh->coordinates().tp == 0);
  parallel::Communicator* tensor_group = mesh != nullptr ? &mesh->tp_group() : nullptr;
  const auto whole = [&](const std::string& parameter, const torch::Tensor& slice) {
    return whole_tensor(parameter, slice, tensor_group);
  };
  if (assembles) {
    // Normally rank 0 made it; a rank that does not see it does not share the file system.
    CF_CHECK(core::path_exists(partial_dir), "checkpoint.dir ", root, ": rank ", world != nullptr ? world->rank() : 0,
             " does not see the folder rank 0 created (", partial_dir,
             "); checkpoints need a folder every rank shares (a shared file system)");
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    // Every assembling rank takes part in each gather; only the writer keeps the result.
    const auto keep = [&](const std::string& key, const torch::Tensor& tensor) {
      if (writes_shard) tensors.emplace_back(key, tensor);
    };
    auto& optimizer_state = contents.optimizer->state();
    for (const auto& parameter : (*contents.model)->named_parameters()) {
      keep("model/" + parameter.key(), whole(parameter.key(), parameter.value().detach()));
      const auto found = optimizer_state.find(parameter.value().unsafeGetTensorImpl());
      if (found == optimizer_state.end()) continue;  // no step taken yet for this parameter
      const auto& state = static_cast<const torch::optim::AdamWParamState&>(*found->second);
      keep("optim/" + parameter.key() + "/exp_avg", whole(parameter.key(), state.exp_avg()));
      keep("optim/" + parameter.key() + "/exp_avg_sq", whole(parameter.key(), state.exp_avg_sq()));
      keep("optim/" + parameter.key() + "/step", torch::tensor(state.step(), torch::kLong));
      if (state.max_exp_avg_sq().defined()) {
        keep("optim/" + parameter.key() + "/max_exp_avg_sq",
                             whole(parameter.key(), state.max_exp_avg_sq()));
      }
    }
    if (writes_shard) {
      tensors.emplace_back("rng/torch_cpu", at::detail::getDefaultCPUGenerator().get_state());
      const models::SafetensorsWritten written = models::save_safetensors(
          partial_dir + "/" + shard_file_name(stage), tensors,
          {{"step", std::to_string(contents.step)}, {"pipeline_stage", std::to_string(stage)}});
      shard_sums[stage][0] = static_cast<int64_t>(written.bytes);
      shard_sums[stage][1] = static_cast<int64_t>(written.crc32c);
    }
  }
  // Every writer's size and CRC-32C reach rank 0 (a sum: each stage's row is non-zero on its
  // writer only), so rank 0 records the shards without reading them back; this also waits
  // until every shard is written.
  if (world != nullptr) world->all_reduce(shard_sums, parallel::ReduceOp::kSum);

  if (leader) {
    // The source model's tokenizer and generation config travel with every checkpoint, so an
    // export needs nothing but the checkpoint.
    if (!config.model.init_from.empty()) {
      const std::string recorded = partial_dir + "/hf";
      core::make_directories(recorded);
      for (const char* file : models::kHfCarriedFiles) {
        const std::string source = config.model.init_from + "/" + file;
        if (core::path_exists(source)) core::write_file_atomic(recorded + "/" + file, core::read_file(source));
      }
    }
    checkpoint::Manifest manifest;
    manifest.set_format_version(kCheckpointFormatVersion);
    manifest.set_step(contents.step);
    manifest.set_config_yaml(configs::to_yaml(config));
    manifest.mutable_layout()->set_dp(config.parallel.dp);
    manifest.mutable_layout()->set_cp(config.parallel.cp);
    manifest.mutable_layout()->set_pp(config.parallel.pp);
    manifest.mutable_layout()->set_tp(config.parallel.tp);
    manifest.mutable_layout()->set_world_size(world != nullptr ? world->size() : 1);
    manifest.mutable_sampler()->set_epoch(contents.sampler.epoch);
    manifest.mutable_sampler()->set_cursor(contents.sampler.cursor);
    manifest.mutable_sampler()->set_step(contents.sampler.step);
    *manifest.mutable_counters() = contents.counters;
    *manifest.mutable_dataset() = contents.dataset;
    manifest.set_created(utc_now());
    manifest.set_hf_source(config.model.init_from);
    for (int64_t index = 0; index < config.parallel.pp; ++index) {
      auto* shard = manifest.add_shards();
      shard->set_file(shard_file_name(static_cast<int>(index)));
      shard->set_pipeline_stage(static_cast<int32_t>(index));
      const uint64_t bytes = static_cast<uint64_t>(shard_sums[index][0].item<int64_t>());
      const std::string path = partial_dir + "/" + shard->file();
      // The size on disk must be what the writer wrote (a cheap stat, no read): anything else
      // means the ranks do not share the folder, or the file changed under us.
      std::error_code error;
      const uintmax_t on_disk = std::filesystem::file_size(path, error);
      CF_CHECK(!error && on_disk == bytes, "checkpoint shard ", path, ": ",
               error ? "cannot be read (" + error.message() + ")" : core::str_cat("has ", on_disk, " bytes"),
               ", its writer wrote ", bytes, " bytes; checkpoint.dir must be a folder every rank shares");
      shard->set_bytes(bytes);
      shard->set_crc32c(static_cast<uint32_t>(shard_sums[index][1].item<int64_t>()));
    }
    std::string serialized;
    CF_CHECK(manifest.SerializeToString(&serialized), "cannot serialize the checkpoint manifest");
    core::write_file_atomic(partial_dir + "/" + kManifestFile, frame_manifest(serialized));
    fsync_directory(partial_dir);

    // Commit: the rename is the moment the checkpoint exists. An older directory of the same
    // step (a run restarted from scratch into the same folder) is moved aside first.
    const std::string replaced = root + "/." + name + ".replaced";
    const bool had_old = core::path_exists(final_dir);
    if (had_old) {
      remove_tree(replaced);
      rename_or_fail(final_dir, replaced);
    }
    rename_or_fail(partial_dir, final_dir);
    fsync_directory(root);
    if (had_old) remove_tree(replaced);

    // Keep the newest keep_last checkpoints.
    const std::vector<std::string> saved = list_checkpoints(root);
    const size_t keep = static_cast<size_t>(config.checkpoint.keep_last);
    for (size_t index = 0; index + keep < saved.size(); ++index) remove_tree(saved[index]);
    core::log_info("checkpoint ", final_dir, " saved (step ", contents.step, ")");
  }
  barrier();
}

}  // namespace

std::string save_checkpoint(const CheckpointContents& contents, parallel::Communicator* world,
                            parallel::DeviceMesh* mesh) {
  const std::string root = contents.config->checkpoint_dir();
  const std::string name = checkpoint_name(contents.step);
  const std::string partial_dir = root + "/." + name + ".partial";
  try {
    write_checkpoint(contents, world, mesh, root, name, partial_dir);
  } catch (const core::Error& error) {
    // A full disk needs its space back; resume never reads a .partial folder anyway.
    if ((world == nullptr || world->rank() == 0) && core::path_exists(partial_dir)) remove_tree(partial_dir);
    const std::vector<std::string> saved = list_checkpoints(root);
    CF_FAIL("checkpoint ", root, "/", name, " (step ", contents.step, ") was not saved: ", error.what(), "; ",
            saved.empty() ? std::string("there is no earlier checkpoint")
                          : "the previous checkpoint " + saved.back() + " is intact");
  }
  return root + "/" + name;
}

std::vector<std::string> list_checkpoints(const std::string& checkpoint_dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  DIR* directory = ::opendir(checkpoint_dir.c_str());
  if (directory == nullptr) return {};
  while (const dirent* entry = ::readdir(directory)) {
    const std::string name = entry->d_name;
    const int64_t step = step_of(name);
    if (step < 0) continue;
    const std::string path = checkpoint_dir + "/" + name;
    if (core::path_exists(path + "/" + kManifestFile)) found.emplace_back(step, path);
  }
  ::closedir(directory);
  std::sort(found.begin(), found.end());
  std::vector<std::string> paths;
  for (const auto& [step, path] : found) paths.push_back(path);
  return paths;
}

std::string resolve_resume(const configs::Config& config) {
  const std::string& resume = config.checkpoint.resume;
  if (resume.empty()) return "";
  if (resume == "auto") {
    const std::vector<std::string> saved = list_checkpoints(config.checkpoint_dir());
    return saved.empty() ? "" : saved.back();
  }
  CF_CHECK(core::path_exists(resume + "/" + kManifestFile), "checkpoint.resume = '", resume,
           "': not a checkpoint directory (no ", kManifestFile, "); use a step-NNNNNNNN folder under ",
           config.checkpoint_dir(), ", \"auto\" or \"\"");
  return resume;
}

checkpoint::Manifest read_manifest(const std::string& directory) {
  const std::string path = directory + "/" + kManifestFile;
  CF_CHECK(core::path_exists(path), "checkpoint ", directory, ": no ", kManifestFile,
           " (an unfinished or foreign directory)");
  const std::string bytes = core::read_file(path);
  constexpr size_t kHeader = sizeof(kManifestMagic) + 4;
  CF_CHECK(bytes.size() >= kHeader && std::memcmp(bytes.data(), kManifestMagic, sizeof(kManifestMagic)) == 0, path,
           ": not a ChunkFlow checkpoint manifest (bad magic; corrupt or foreign file)");
  uint32_t recorded = 0;
  for (int index = 3; index >= 0; --index) {
    recorded = (recorded << 8) | static_cast<uint8_t>(bytes[sizeof(kManifestMagic) + static_cast<size_t>(index)]);
  }
  const uint32_t actual = core::crc32c(bytes.data() + kHeader, bytes.size() - kHeader);
  CF_CHECK(actual == recorded, path, ": checksum mismatch (CRC-32C ", actual, ", recorded ", recorded,
           "): the manifest is corrupt; this checkpoint is unusable, resume from an earlier one "
           "(checkpoint.resume=<its folder>)");
  checkpoint::Manifest manifest;
  CF_CHECK(manifest.ParseFromArray(bytes.data() + kHeader, static_cast<int>(bytes.size() - kHeader)), path,
           ": not a valid checkpoint manifest (corrupt)");
  CF_CHECK(manifest.format_version() == kCheckpointFormatVersion, path, ": checkpoint format version ",
           manifest.format_version(), ", this build reads version ", kCheckpointFormatVersion);
  CF_CHECK(manifest.shards_size() > 0, path, ": lists no shards (corrupt)");
  const checkpoint::Counters& counters = manifest.counters();
  CF_CHECK(counters.skipped_steps() >= 0 && counters.consecutive_skipped_steps() >= 0 &&
               counters.consecutive_skipped_steps() <= counters.skipped_steps() &&
               counters.skipped_steps() <= manifest.step(),
           path, ": skipped-step counters (", counters.skipped_steps(), " skipped, ",
           counters.consecutive_skipped_steps(), " in a row, at step ", manifest.step(),
           ") must satisfy 0 <= in a row <= skipped <= step (corrupt)");
  return manifest;
}

void verify_shard(const std::string& directory, const checkpoint::Shard& shard) {
  CF_CHECK(!shard.file().empty() && shard.file().find('/') == std::string::npos, "checkpoint ", directory,
           ": manifest names shard file '", shard.file(), "', which is not a plain file name (corrupt manifest)");
  const std::string path = directory + "/" + shard.file();
  CF_CHECK(core::path_exists(path), "checkpoint shard ", path, " is missing; this checkpoint is unusable, resume "
           "from an earlier one (checkpoint.resume=<its folder>)");
  uint64_t bytes = 0;
  const uint32_t crc = file_crc32c(path, &bytes);
  CF_CHECK(bytes == shard.bytes(), "checkpoint shard ", path, " has ", bytes, " bytes, the manifest says ",
           shard.bytes(), " (truncated or replaced); this checkpoint is unusable, resume from an earlier one "
           "(checkpoint.resume=<its folder>)");
  CF_CHECK(crc == shard.crc32c(), "checkpoint shard ", path, " fails its checksum (CRC-32C ", crc,
           ", manifest ", shard.crc32c(), "): the file is corrupt; this checkpoint is unusable, resume from an "
           "earlier one (checkpoint.resume=<its folder>)");
}

std::map<std::string, torch::Tensor> read_checkpoint_tensors(const std::string& directory,
                                                             const checkpoint::Manifest& manifest,
                                                             const std::function<bool(const std::string&)>& wanted) {
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& shard : manifest.shards()) {
    verify_shard(directory, shard);
    const models::SafetensorsFile file(directory + "/" + shard.file());
    for (const auto& entry : file.entries()) {
      // A tied embedding is in the first and the last stage's shards, with equal values.
      if ((wanted && !wanted(entry.name)) || tensors.count(entry.name)) continue;
      tensors[entry.name] = file.load(entry.name);
    }
  }
  return tensors;
}

checkpoint::Manifest load_checkpoint(const std::string& directory, const configs::Config& config,
                                     const data::IndexedDataset& dataset, models::CausalLM& model,
                                     torch::optim::AdamW& optimizer) {
  const checkpoint::Manifest manifest = read_manifest(directory);
  configs::Config saved;
  try {
    saved = configs::parse_config(manifest.config_yaml(), directory + "/" + kManifestFile + " (config)");
  } catch (const core::Error& error) {
    CF_FAIL("checkpoint ", directory, ": its saved config does not parse (", error.what(), ")");
  }

  // The weights must fit the model; the sampler position must mean the same batches.
  std::vector<std::string> differ = differences("model", saved.model, config.model, {"dtype"});
  CF_CHECK(differ.empty(), "checkpoint ", directory, " holds a different model than the run config:\n  ",
           core::join(differ, "\n  "), "\n(resume needs the same model section)");
  std::vector<std::string> data_differ = differences(
      "data", saved.data, config.data, {"path", "loss_mask_path"});
  if (saved.run.seed != config.run.seed) {
    data_differ.push_back(core::str_cat("run.seed: checkpoint ", saved.run.seed, ", run ", config.run.seed));
  }
  CF_CHECK(data_differ.empty(), "checkpoint ", directory, " was taken with other data settings, so its sampler "
           "position would pick other batches:\n  ", core::join(data_differ, "\n  "));
  const checkpoint::DatasetFingerprint current = dataset_fingerprint(dataset, config.data.path);
  const checkpoint::DatasetFingerprint& recorded = manifest.dataset();
  CF_CHECK(current.sequences() == recorded.sequences() && current.tokens() == recorded.tokens() &&
               current.index_crc32c() == recorded.index_crc32c(),
           "checkpoint ", directory, " was taken on dataset ", recorded.path(), " (", recorded.sequences(),
           " sequences, ", recorded.tokens(), " tokens, .idx CRC-32C ", recorded.index_crc32c(), ") but ",
           config.data.path, " now has ", current.sequences(), " sequences, ", current.tokens(),
           " tokens, .idx CRC-32C ", current.index_crc32c(), ": the dataset changed under the run");

  // Only the tensors this stage holds (by name: any layout can resume any other's).
  const auto parameters = model->named_parameters();
  const auto tensors = read_checkpoint_tensors(directory, manifest, [&](const std::string& name) {
    if (name == "rng/torch_cpu") return true;
    const size_t slash = name.find('/');
    const size_t second = name.find('/', slash + 1);
    const std::string parameter = name.substr(slash + 1, second == std::string::npos ? std::string::npos : second - slash - 1);
    return parameters.contains(parameter);
  });
  torch::NoGradGuard no_grad;
  auto& optimizer_state = optimizer.state();
  // Checkpoints hold whole tensors; under tensor parallelism this rank keeps its slice of each.
  const models::TensorParallel& tp = model->tensor_parallel();
  for (const auto& parameter : parameters) {
    const auto found = tensors.find("model/" + parameter.key());
    CF_CHECK(found != tensors.end(), "checkpoint ", directory, " has no tensor model/", parameter.key());
    const std::vector<int64_t> whole_shape =
        models::tensor_parallel_whole_shape(parameter.value().sizes().vec(), parameter.key(), tp.size);
    CF_CHECK(found->second.sizes().vec() == whole_shape, "checkpoint ", directory, ": model/", parameter.key(),
             " has shape ", found->second.sizes(), ", the model needs ", c10::IntArrayRef(whole_shape));
    const auto slice = [&](const torch::Tensor& stored) {
      return models::tensor_parallel_slice(stored, parameter.key(), tp.rank, tp.size);
    };
    parameter.value().copy_(slice(found->second));
    const std::string prefix = "optim/" + parameter.key() + "/";
    if (!tensors.count(prefix + "step")) continue;
    // A fresh copy on the parameter's device (a GPU run resumes with its AdamW state on the GPU).
    const auto moment = [&](const std::string& name) {
      const torch::Tensor stored = slice(tensors.at(prefix + name));
      return stored.to(parameter.value().device(), stored.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
    };
    auto state = std::make_unique<torch::optim::AdamWParamState>();
    state->step(tensors.at(prefix + "step").item<int64_t>());
    state->exp_avg(moment("exp_avg"));
    state->exp_avg_sq(moment("exp_avg_sq"));
    if (tensors.count(prefix + "max_exp_avg_sq")) state->max_exp_avg_sq(moment("max_exp_avg_sq"));
    optimizer_state[parameter.value().unsafeGetTensorImpl()] = std::move(state);
  }
  if (tensors.count("rng/torch_cpu")) {
    at::Generator generator = at::detail::getDefaultCPUGenerator();  // a handle to the global one
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(tensors.at("rng/torch_cpu"));
  }
  return manifest;
}

}  // namespace chunkflow::trainer
