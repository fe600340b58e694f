// Scratch files and input sections for the fuzz targets; see fuzz_support.h.
#include "tests/fuzz/fuzz_support.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

namespace chunkflow::fuzz {
namespace {

std::string make_scratch_dir() {
  const char* chosen = std::getenv("CHUNKFLOW_FUZZ_SCRATCH");
  std::string base = chosen != nullptr && *chosen != '\0' ? chosen : "/dev/shm";
  if (!std::filesystem::is_directory(base)) {
    const char* tmp = std::getenv("TMPDIR");
    base = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
  }
  std::string pattern = base + "/chunkflow-fuzz-XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) {
    std::fprintf(stderr, "fuzz: cannot create a scratch folder under %s: %s\n", base.c_str(),
                 std::strerror(errno));
    std::abort();
  }
  return pattern;
}

}  // namespace

const std::string& scratch_dir() {
  // Never destroyed: the exit handler, registered while this static is being initialised, runs
  // after the static's destructor would have.
  static const std::string* const dir = [] {
    const auto* made = new std::string(make_scratch_dir());
    std::atexit([] {
      std::error_code ignored;
      std::filesystem::remove_all(scratch_dir(), ignored);
    });
    return made;
  }();
  return *dir;
}

std::string scratch_path(const std::string& name) { return scratch_dir() + "/" + name; }

void write_bytes(const std::string& path, std::string_view bytes) {
  std::FILE* file = std::fopen(path.c_str(), "wb");
  const bool written = file != nullptr &&
                       std::fwrite(bytes.data(), 1, bytes.size(), file) == bytes.size();
  if (file == nullptr || std::fclose(file) != 0 || !written) {
    std::fprintf(stderr, "fuzz: cannot write %s: %s\n", path.c_str(), std::strerror(errno));
    std::abort();
  }
}

void remove_file(const std::string& path) { ::unlink(path.c_str()); }

std::string_view Sections::next() {
  if (at_ + 4 > size_) {
    at_ = size_;
    return {};
  }
  uint32_t length = 0;
  for (int index = 3; index >= 0; --index) length = (length << 8) | data_[at_ + static_cast<size_t>(index)];
  at_ += 4;
  const size_t taken = std::min<size_t>(length, size_ - at_);
  const std::string_view section(reinterpret_cast<const char*>(data_ + at_), taken);
  at_ += taken;
  return section;
}

}  // namespace chunkflow::fuzz
