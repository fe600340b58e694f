// POSIX implementations of the file helpers in file_io.h.
#include "core/file_io.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include "core/error.h"

namespace chunkflow::core {
namespace {

std::string os_error() { return std::strerror(errno); }

std::string parent_directory(const std::string& path) {
  const auto parent = std::filesystem::path(path).parent_path();
  return parent.empty() ? "." : parent.string();
}

void fsync_directory(const std::string& directory) {
  const int fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;  // best effort: some filesystems do not allow opening directories
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

MappedFile::MappedFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  CF_CHECK(fd >= 0, "cannot open '", path, "': ", os_error());
  struct stat info {};
  if (::fstat(fd, &info) != 0) {
    const std::string why = os_error();
    ::close(fd);
    CF_FAIL("cannot stat '", path, "': ", why);
  }
  if (!S_ISREG(info.st_mode)) {
    ::close(fd);
    CF_FAIL("'", path, "' is not a regular file");
  }
  size_ = static_cast<size_t>(info.st_size);
  if (size_ > 0) {
    void* mapped = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
    if (mapped == MAP_FAILED) {
      const std::string why = os_error();
      ::close(fd);
      CF_FAIL("cannot memory-map '", path, "' (", size_, " bytes): ", why);
    }
    data_ = static_cast<const uint8_t*>(mapped);
  }
  ::close(fd);
}

MappedFile::~MappedFile() { release(); }

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)), data_(other.data_), size_(other.size_) {
  other.data_ = nullptr;
  other.size_ = 0;
}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    data_ = other.data_;
    size_ = other.size_;
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

void MappedFile::release() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
}

AtomicFileWriter::AtomicFileWriter(std::string final_path) : final_path_(std::move(final_path)) {
  temp_path_ = final_path_ + ".tmp." + std::to_string(::getpid());
  file_ = std::fopen(temp_path_.c_str(), "wb");
  CF_CHECK(file_ != nullptr, "cannot create '", temp_path_, "' (for '", final_path_,
           "'): ", os_error());
}

AtomicFileWriter::~AtomicFileWriter() {
  if (file_ != nullptr) std::fclose(file_);
  if (!committed_) std::remove(temp_path_.c_str());
}

void AtomicFileWriter::write(const void* bytes, size_t count) {
  CF_ASSERT(file_ != nullptr && !synced_, "write after sync on ", final_path_);
  if (count == 0) return;
  const size_t written = std::fwrite(bytes, 1, count, file_);
  CF_CHECK(written == count, "cannot write '", temp_path_, "' (", bytes_written_ + written,
           " bytes so far): ", os_error(), "; '", final_path_, "' was left unchanged");
  bytes_written_ += count;
}

void AtomicFileWriter::sync() {
  if (synced_) return;
  CF_CHECK(std::fflush(file_) == 0 && ::fsync(::fileno(file_)) == 0, "cannot flush '", temp_path_,
           "': ", os_error(), "; '", final_path_, "' was left unchanged");
  const int closed = std::fclose(file_);
  file_ = nullptr;
  CF_CHECK(closed == 0, "cannot close '", temp_path_, "': ", os_error());
  synced_ = true;
}

void AtomicFileWriter::commit() {
  sync();
  CF_CHECK(std::rename(temp_path_.c_str(), final_path_.c_str()) == 0, "cannot rename '",
           temp_path_, "' to '", final_path_, "': ", os_error());
  committed_ = true;
  fsync_directory(parent_directory(final_path_));
}

void write_file_atomic(const std::string& path, std::string_view content) {
  AtomicFileWriter writer(path);
  writer.write(content);
  writer.commit();
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  CF_CHECK(in.good(), "cannot open '", path, "': ", os_error());
  std::ostringstream content;
  content << in.rdbuf();
  return content.str();
}

void make_directories(const std::string& path) {
  std::error_code error;
  std::filesystem::create_directories(path, error);
  CF_CHECK(!error, "cannot create directory '", path, "': ", error.message());
}

bool path_exists(const std::string& path) {
  std::error_code error;
  return std::filesystem::exists(path, error);
}

}  // namespace chunkflow::core
