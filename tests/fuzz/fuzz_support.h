// Shared by the libFuzzer targets: a private scratch folder per process (the parsers read from
// paths, so each input is written to a file and the real entry point opens it), and the split of
// one fuzz input into the several files some parsers need.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace chunkflow::fuzz {

// A folder only this process uses: <base>/chunkflow-fuzz-XXXXXX with base $CHUNKFLOW_FUZZ_SCRATCH
// (scripts/fuzz.sh sets it and removes it afterwards, crashes included), else /dev/shm (tmpfs keeps
// the per-input file writes cheap), else $TMPDIR or /tmp. Created on first use, removed with
// everything in it at a normal exit.
const std::string& scratch_dir();

// scratch_dir() + "/" + name.
std::string scratch_path(const std::string& name);

// Replaces `path` with exactly `bytes` (a plain write: the fuzz target is the only reader).
// Aborts when the file cannot be written, since every later verdict would be meaningless.
void write_bytes(const std::string& path, std::string_view bytes);

// Removes `path` if it exists (files left by the previous input must not leak into this one).
void remove_file(const std::string& path);

// Cuts one fuzz input into consecutive sections, each a u32 little-endian length followed by
// that many bytes. A length past the end of the input takes what is left; once the input is
// used up, has_more() is false and next() returns empty sections.
class Sections {
 public:
  Sections(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  bool has_more() const { return at_ < size_; }
  std::string_view next();

 private:
  const uint8_t* data_;
  size_t size_;
  size_t at_ = 0;
};

}  // namespace chunkflow::fuzz
