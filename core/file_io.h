// Files: read-only memory maps with bounds-aware access, and atomic writes (temporary file,
// fsync, rename) so that a crash or a full disk never leaves a half-written file under the final
// name and never clobbers the previous version.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

namespace chunkflow::core {

// A whole file mapped read-only. An empty file maps to size() == 0 and data() == nullptr.
class MappedFile {
 public:
  MappedFile() = default;
  // Throws Error naming `path` and the OS error when it cannot be opened or mapped.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void release();
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Writes `final_path` atomically: bytes go to a temporary file beside it; commit() flushes,
// fsyncs, renames over the final name and fsyncs the directory. Destroyed without commit() (an
// exception, an error), the temporary file is removed and the final path is untouched.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string final_path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* bytes, size_t count);
  void write(std::string_view text) { write(text.data(), text.size()); }
  uint64_t bytes_written() const { return bytes_written_; }
  // Flushes and fsyncs the temporary file without renaming it (for multi-file commits).
  void sync();
  // sync() then rename onto the final path.
  void commit();
  const std::string& final_path() const { return final_path_; }

 private:
  std::string final_path_;
  std::string temp_path_;
  std::FILE* file_ = nullptr;
  uint64_t bytes_written_ = 0;
  bool synced_ = false;
  bool committed_ = false;
};

// Whole-file helpers built on the above.
void write_file_atomic(const std::string& path, std::string_view content);
std::string read_file(const std::string& path);
// mkdir -p; throws Error naming the path on failure.
void make_directories(const std::string& path);
bool path_exists(const std::string& path);

}  // namespace chunkflow::core
