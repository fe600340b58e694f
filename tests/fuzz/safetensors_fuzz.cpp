// Fuzzes the safetensors reader (models::SafetensorsFile): header length, JSON header, dtypes,
// shapes, offsets, metadata, then loads every tensor it accepted.
//
// Input: the file's bytes. Contract: the constructor either throws core::Error or yields entries
// whose ranges lie inside the data section, and load() of each gives a tensor of the entry's
// dtype, shape and byte size; any other exception (torch's c10::Error included), a crash or a
// sanitizer report is a bug.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "models/safetensors.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

namespace fuzz = chunkflow::fuzz;

void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz: contract broken: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = fuzz::scratch_path("model.safetensors");
  fuzz::write_bytes(path, std::string_view(reinterpret_cast<const char*>(data), size));
  try {
    const chunkflow::models::SafetensorsFile file(path);
    for (const auto& entry : file.entries()) {
      require(file.contains(entry.name), "an entry is not found by name");
      require(entry.begin <= entry.end && entry.end <= size, "an entry's range leaves the file");
      const torch::Tensor tensor = file.load(entry.name);
      require(tensor.scalar_type() == entry.dtype, "loaded dtype differs from the header");
      require(tensor.sizes().vec() == entry.shape, "loaded shape differs from the header");
      require(static_cast<uint64_t>(tensor.nbytes()) == entry.end - entry.begin,
              "loaded byte size differs from data_offsets");
    }
  } catch (const chunkflow::core::Error&) {
    // A rejected file: the expected outcome for most inputs.
  }
  return 0;
}
