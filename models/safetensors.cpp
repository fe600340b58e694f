// Safetensors reading (validated header, copies out of a memory map) and atomic writing.
#include "models/safetensors.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "core/crc32c.h"
#include "core/error.h"
#include "core/strings.h"

namespace chunkflow::models {
namespace {

using OrderedJson = nlohmann::ordered_json;

// A header larger than this is refused before it is parsed (Hugging Face's reader uses the same
// bound): it keeps a corrupt length field from allocating gigabytes.
constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;

struct DtypeName {
  const char* name;
  torch::ScalarType dtype;
};
constexpr DtypeName kDtypes[] = {
    {"F64", torch::kDouble}, {"F32", torch::kFloat},  {"F16", torch::kHalf},
    {"BF16", torch::kBFloat16}, {"I64", torch::kLong}, {"I32", torch::kInt},
    {"I16", torch::kShort},  {"I8", torch::kChar},    {"U8", torch::kByte},
    {"BOOL", torch::kBool}};

std::string known_dtypes() {
  std::string text;
  for (const auto& entry : kDtypes) text += (text.empty() ? "" : " ") + std::string(entry.name);
  return text;
}

const char* dtype_name(torch::ScalarType dtype, const std::string& tensor) {
  for (const auto& entry : kDtypes) {
    if (entry.dtype == dtype) return entry.name;
  }
  CF_FAIL("safetensors: tensor '", tensor, "' has dtype ", dtype,
          ", which safetensors files here cannot hold (", known_dtypes(), ")");
}

uint64_t read_u64_le(const uint8_t* bytes) {
  uint64_t value = 0;
  for (int index = 7; index >= 0; --index) value = (value << 8) | bytes[index];
  return value;
}

void append_u64_le(std::string& out, uint64_t value) {
  for (int index = 0; index < 8; ++index) out.push_back(static_cast<char>((value >> (8 * index)) & 0xff));
}

// Fails with the file, the tensor and the rule.
#define CF_HEADER_CHECK(cond, path, tensor, ...) \
  CF_CHECK(cond, "safetensors file ", path, ": tensor '", tensor, "': ", __VA_ARGS__)

SafetensorsEntry parse_entry(const std::string& path, const std::string& name,
                             const OrderedJson& value, uint64_t data_bytes) {
  CF_HEADER_CHECK(value.is_object(), path, name, "header entry must be an object, got ", value.dump());
  SafetensorsEntry entry;
  entry.name = name;
  const auto dtype = value.find("dtype");
  CF_HEADER_CHECK(dtype != value.end() && dtype->is_string(), path, name, "needs a string \"dtype\"");
  const std::string dtype_text = dtype->get<std::string>();
  bool known = false;
  for (const auto& candidate : kDtypes) {
    if (dtype_text == candidate.name) {
      entry.dtype = candidate.dtype;
      known = true;
    }
  }
  CF_HEADER_CHECK(known, path, name, "unknown dtype \"", dtype_text, "\" (known: ", known_dtypes(), ")");

  const auto shape = value.find("shape");
  CF_HEADER_CHECK(shape != value.end() && shape->is_array(), path, name, "needs a \"shape\" array");
  // The bound applies to the product of the non-zero dims: torch computes strides from them even
  // when another dim is 0, so [0, 2^64 - 1] (a negative int64) or [0, 2^62, 2^62] would reach
  // torch::empty and throw c10::Error instead of this file's error.
  constexpr uint64_t kMaxElements = std::numeric_limits<int64_t>::max() / 16;
  uint64_t elements = 1;
  uint64_t nonzero_elements = 1;
  for (const auto& dim : *shape) {
    CF_HEADER_CHECK(dim.is_number_unsigned() || (dim.is_number_integer() && dim.get<int64_t>() >= 0),
                    path, name, "shape entries must be non-negative integers, got ", shape->dump());
    const uint64_t size = dim.get<uint64_t>();
    CF_HEADER_CHECK(size == 0 || nonzero_elements <= kMaxElements / size, path, name, "shape ", shape->dump(),
                    " overflows (the product of its non-zero dims must be below 2^59)");
    if (size != 0) nonzero_elements *= size;
    elements *= size;
    entry.shape.push_back(static_cast<int64_t>(size));
  }

  const auto offsets = value.find("data_offsets");
  CF_HEADER_CHECK(offsets != value.end() && offsets->is_array() && offsets->size() == 2 &&
                      (*offsets)[0].is_number_unsigned() && (*offsets)[1].is_number_unsigned(),
                  path, name, "needs \"data_offsets\": [begin, end] of non-negative integers, got ",
                  offsets == value.end() ? std::string("nothing") : offsets->dump());
  entry.begin = (*offsets)[0].get<uint64_t>();
  entry.end = (*offsets)[1].get<uint64_t>();
  CF_HEADER_CHECK(entry.begin <= entry.end, path, name, "data_offsets [", entry.begin, ", ", entry.end,
                  "] must not decrease");
  CF_HEADER_CHECK(entry.end <= data_bytes, path, name, "data_offsets [", entry.begin, ", ", entry.end,
                  "] run past the data section (", data_bytes, " bytes; the file is truncated or the header is wrong)");
  const uint64_t expected = elements * c10::elementSize(entry.dtype);
  CF_HEADER_CHECK(entry.end - entry.begin == expected, path, name, "shape ", shape->dump(), " of ",
                  dtype_text, " needs ", expected, " bytes but data_offsets hold ", entry.end - entry.begin);
  return entry;
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(path) {
  const uint64_t size = file_.size();
  CF_CHECK(size >= 8, "safetensors file ", path, ": ", size,
           " bytes is too short for the 8-byte header length (truncated or not a safetensors file)");
  const uint64_t header_bytes = read_u64_le(file_.data());
  CF_CHECK(header_bytes <= size - 8, "safetensors file ", path, ": header length ", header_bytes,
           " exceeds the ", size - 8, " bytes after the length field (truncated or not a safetensors file)");
  CF_CHECK(header_bytes <= kMaxHeaderBytes, "safetensors file ", path, ": header length ", header_bytes,
           " exceeds the ", kMaxHeaderBytes, "-byte limit");
  data_begin_ = 8 + header_bytes;
  const uint64_t data_bytes = size - data_begin_;

  OrderedJson header;
  try {
    header = OrderedJson::parse(file_.data() + 8, file_.data() + data_begin_);
  } catch (const nlohmann::json::exception& error) {
    CF_FAIL("safetensors file ", path, ": header is not valid JSON (", error.what(), ")");
  }
  CF_CHECK(header.is_object(), "safetensors file ", path, ": header must be a JSON object, got ",
           header.type_name());

  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      CF_CHECK(value.is_object(), "safetensors file ", path, ": __metadata__ must be an object");
      for (const auto& [key, text] : value.items()) {
        CF_CHECK(text.is_string(), "safetensors file ", path, ": __metadata__[\"", key,
                 "\"] must be a string, got ", text.dump());
        metadata_[key] = text.get<std::string>();
      }
      continue;
    }
    index_[name] = entries_.size();
    entries_.push_back(parse_entry(path, name, value, data_bytes));
  }

  // Overlapping ranges would make two tensors alias the same bytes: refuse them.
  std::vector<const SafetensorsEntry*> by_offset;
  for (const auto& entry : entries_) by_offset.push_back(&entry);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const auto* a, const auto* b) { return a->begin < b->begin || (a->begin == b->begin && a->end < b->end); });
  for (size_t index = 1; index < by_offset.size(); ++index) {
    const auto* previous = by_offset[index - 1];
    const auto* current = by_offset[index];
    CF_CHECK(current->begin >= previous->end || current->begin == current->end ||
                 previous->begin == previous->end,
             "safetensors file ", path, ": tensors '", previous->name, "' [", previous->begin, ", ",
             previous->end, ") and '", current->name, "' [", current->begin, ", ", current->end,
             ") overlap");
  }
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  const auto found = index_.find(name);
  CF_CHECK(found != index_.end(), "safetensors file ", path(), ": no tensor named '", name, "'");
  return entries_[found->second];
}

torch::Tensor SafetensorsFile::load(const std::string& name) const {
  const SafetensorsEntry& source = entry(name);
  torch::Tensor tensor = torch::empty(source.shape, torch::TensorOptions().dtype(source.dtype));
  const uint64_t bytes = source.end - source.begin;
  if (bytes > 0) std::memcpy(tensor.data_ptr(), file_.data() + data_begin_ + source.begin, bytes);
  return tensor;
}

std::map<std::string, std::string> safetensors_weight_map(const std::string& directory) {
  const std::string single = directory + "/model.safetensors";
  const std::string index_path = directory + "/model.safetensors.index.json";
  std::map<std::string, std::string> weight_map;
  if (core::path_exists(index_path)) {
    nlohmann::json index;
    try {
      index = nlohmann::json::parse(core::read_file(index_path));
    } catch (const nlohmann::json::exception& error) {
      CF_FAIL(index_path, ": not valid JSON (", error.what(), ")");
    }
    CF_CHECK(index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(),
             index_path, ": needs an object \"weight_map\" (tensor name -> shard file)");
    for (const auto& [name, shard] : index["weight_map"].items()) {
      CF_CHECK(shard.is_string(), index_path, ": weight_map[\"", name, "\"] must be a file name, got ",
               shard.dump());
      const std::string file = shard.get<std::string>();
      CF_CHECK(!file.empty() && file.find('/') == std::string::npos && file != "." && file != "..",
               index_path, ": weight_map[\"", name, "\"] = \"", file,
               "\" must be a plain file name inside the model directory");
      weight_map[name] = directory + "/" + file;
    }
    // Every shard must exist and hold what the index says it holds.
    std::map<std::string, std::vector<std::string>> by_shard;
    for (const auto& [name, file] : weight_map) by_shard[file].push_back(name);
    for (const auto& [file, names] : by_shard) {
      CF_CHECK(core::path_exists(file), index_path, ": shard ", file, " is missing");
      const SafetensorsFile shard(file);
      for (const auto& name : names) {
        CF_CHECK(shard.contains(name), index_path, ": maps '", name, "' to ", file, ", which has no such tensor");
      }
    }
    return weight_map;
  }
  CF_CHECK(core::path_exists(single), "model directory ", directory,
           ": has neither model.safetensors nor model.safetensors.index.json");
  const SafetensorsFile file(single);
  for (const auto& entry : file.entries()) weight_map[entry.name] = single;
  return weight_map;
}

std::map<std::string, torch::Tensor> load_safetensors_directory(
    const std::string& directory, const std::function<bool(const std::string&)>& wanted) {
  std::map<std::string, std::vector<std::string>> by_shard;
  for (const auto& [name, file] : safetensors_weight_map(directory)) {
    if (!wanted || wanted(name)) by_shard[file].push_back(name);
  }
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& [file, names] : by_shard) {
    const SafetensorsFile shard(file);
    for (const auto& name : names) tensors[name] = shard.load(name);
  }
  return tensors;
}

SafetensorsWritten save_safetensors(const std::string& path,
                                   const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                                   const std::map<std::string, std::string>& metadata) {
  OrderedJson header = OrderedJson::object();
  if (!metadata.empty()) {
    OrderedJson meta = OrderedJson::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    header["__metadata__"] = meta;
  }
  std::vector<torch::Tensor> contiguous;
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    CF_CHECK(!name.empty() && name != "__metadata__", "save_safetensors ", path, ": invalid tensor name '", name, "'");
    CF_CHECK(names.insert(name).second, "save_safetensors ", path, ": tensor '", name, "' appears twice");
    CF_CHECK(tensor.defined(), "save_safetensors ", path, ": tensor '", name, "' is undefined");
    const char* dtype = dtype_name(tensor.scalar_type(), name);
    torch::Tensor bytes = tensor.detach().to(torch::kCPU).contiguous();
    const uint64_t size = static_cast<uint64_t>(bytes.numel()) * bytes.element_size();
    header[name] = {{"dtype", dtype}, {"shape", bytes.sizes().vec()}, {"data_offsets", {offset, offset + size}}};
    offset += size;
    contiguous.push_back(bytes);
  }
  std::string header_text = header.dump();
  // Pad with spaces to a multiple of 8 so the data section starts aligned (as Hugging Face does).
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  std::string prefix;
  append_u64_le(prefix, header_text.size());
  core::AtomicFileWriter writer(path);
  SafetensorsWritten written;
  const auto write = [&](const void* data, size_t size) {
    writer.write(data, size);
    written.crc32c = core::crc32c(data, size, written.crc32c);
    written.bytes += size;
  };
  write(prefix.data(), prefix.size());
  write(header_text.data(), header_text.size());
  for (const auto& bytes : contiguous) {
    write(bytes.data_ptr(), static_cast<size_t>(bytes.numel()) * bytes.element_size());
  }
  writer.commit();
  return written;
}

std::vector<std::string> save_safetensors_sharded(
    const std::string& directory, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
    uint64_t max_shard_bytes, const std::map<std::string, std::string>& metadata) {
  CF_CHECK(max_shard_bytes > 0, "save_safetensors_sharded: max_shard_bytes must be > 0");
  core::make_directories(directory);
  std::vector<std::vector<std::pair<std::string, torch::Tensor>>> shards(1);
  uint64_t shard_bytes = 0, total_bytes = 0;
  for (const auto& named : tensors) {
    const uint64_t bytes = static_cast<uint64_t>(named.second.numel()) * named.second.element_size();
    if (!shards.back().empty() && shard_bytes + bytes > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(named);
    shard_bytes += bytes;
    total_bytes += bytes;
  }
  std::vector<std::string> written;
  if (shards.size() == 1) {
    save_safetensors(directory + "/model.safetensors", shards[0], metadata);
    written.push_back("model.safetensors");
    return written;
  }
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (size_t index = 0; index < shards.size(); ++index) {
    char file_name[64];
    std::snprintf(file_name, sizeof(file_name), "model-%05zu-of-%05zu.safetensors", index + 1,
                  shards.size());
    const std::string file = file_name;
    save_safetensors(directory + "/" + file, shards[index], metadata);
    for (const auto& named : shards[index]) weight_map[named.first] = file;
    written.push_back(file);
  }
  nlohmann::ordered_json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
  core::write_file_atomic(directory + "/model.safetensors.index.json", index.dump(2) + "\n");
  written.push_back("model.safetensors.index.json");
  return written;
}

}  // namespace chunkflow::models
