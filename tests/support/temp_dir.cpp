// TempDir: mkdtemp under $TMPDIR (or /tmp), recursive removal at the end.
#include "tests/support/temp_dir.h"

#include <cstdlib>
#include <filesystem>
#include <stdexcept>

namespace chunkflow::testing {

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = std::string(base != nullptr ? base : "/tmp") + "/chunkflow_test_XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + pattern);
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

std::string TempDir::file(const std::string& name) const { return path_ + "/" + name; }

std::string source_file(const std::string& relative) {
  return std::string(CHUNKFLOW_SOURCE_DIR) + "/" + relative;
}

std::string python_executable() { return CHUNKFLOW_PYTHON; }

}  // namespace chunkflow::testing
