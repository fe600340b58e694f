// Test support: a fresh temporary directory per test (removed on destruction) and paths into
// the source tree.
#pragma once

#include <string>

namespace chunkflow::testing {

class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // path() + "/" + name
  std::string file(const std::string& name) const;

 private:
  std::string path_;
};

// Absolute path of a file in the source tree, e.g. source_file("configs/demo.yaml"). (__FILE__
// cannot serve: ccache's base-directory rewriting makes it relative to the build folder.)
std::string source_file(const std::string& relative);

// The bootstrap virtualenv's python (torch, transformers, tensorboard), for cross-checks against
// the reference libraries.
std::string python_executable();

}  // namespace chunkflow::testing
