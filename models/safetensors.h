// Safetensors files (Hugging Face's weight format): an 8-byte little-endian header length, a JSON
// header naming each tensor's dtype, shape and [begin, end) byte range in the data section, then
// the raw little-endian bytes. Reading checks every offset, size and shape against the file
// before touching tensor bytes, so a malformed or malicious header is an error naming the file
// and the broken rule, never a crash or an out-of-bounds read. Writing is atomic.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/file_io.h"

namespace chunkflow::models {

// One tensor of a safetensors file; begin/end are offsets into the data section.
struct SafetensorsEntry {
  std::string name;
  torch::ScalarType dtype = torch::kFloat;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;
};

// A safetensors file opened for reading (memory-mapped; tensors are copied out on load).
class SafetensorsFile {
 public:
  // Maps the file and validates the header: its length fits the file (and is at most 100 MiB),
  // it is a JSON object, every entry has a known dtype (F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL),
  // a non-negative shape whose byte size equals end - begin, and a range inside the data section;
  // ranges do not overlap. `__metadata__` must map strings to strings. Throws core::Error naming
  // the file, the tensor and the rule.
  explicit SafetensorsFile(const std::string& path);

  const std::string& path() const { return file_.path(); }
  // Entries in header order.
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const { return index_.count(name) > 0; }
  const SafetensorsEntry& entry(const std::string& name) const;

  // A CPU tensor holding a copy of the named tensor's bytes. Throws core::Error for an unknown
  // name.
  torch::Tensor load(const std::string& name) const;

 private:
  core::MappedFile file_;
  uint64_t data_begin_ = 0;  // 8 + header length
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// Tensor name -> file of a Hugging Face model directory: every tensor of `model.safetensors`, or
// of the shards listed in `model.safetensors.index.json` ("weight_map"). Throws core::Error when
// neither exists, when the index is malformed or names a shard outside the directory, or when a
// tensor the index maps to a shard is not in it.
std::map<std::string, std::string> safetensors_weight_map(const std::string& directory);

// Loads the tensors of a Hugging Face model directory (see safetensors_weight_map) for which
// `wanted(name)` is true (all when empty), opening each shard once.
std::map<std::string, torch::Tensor> load_safetensors_directory(
    const std::string& directory, const std::function<bool(const std::string&)>& wanted = {});

// The size and CRC-32C (core/crc32c.h) of a file save_safetensors wrote, computed from the bytes
// as they were written: a caller records the checksum without reading the file back.
struct SafetensorsWritten {
  uint64_t bytes = 0;
  uint32_t crc32c = 0;
};

// Writes `tensors` (CPU or not; made contiguous; F64/F32/F16/BF16/I64/I32/I16/I8/U8/BOOL) in the
// given order to `path` atomically, with optional string metadata. Names must be unique.
SafetensorsWritten save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Writes `tensors` into `directory` as Hugging Face does: one `model.safetensors` when the total
// fits in `max_shard_bytes`, otherwise `model-0000i-of-0000n.safetensors` shards of at most
// max_shard_bytes each (a tensor larger than that gets a shard of its own) plus
// `model.safetensors.index.json` (metadata.total_size and weight_map). Each file is written
// atomically; returns the file names written (index last).
std::vector<std::string> save_safetensors_sharded(
    const std::string& directory, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
    uint64_t max_shard_bytes, const std::map<std::string, std::string>& metadata = {});

}  // namespace chunkflow::models
