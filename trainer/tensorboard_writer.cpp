// TensorBoardWriter: Event protos framed as TFRecords, one fwrite per record; and the checking
// reader that walks the same framing back.
#include "trainer/tensorboard_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <climits>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <system_error>

#include "core/crc32c.h"
#include "core/error.h"
#include "core/file_io.h"
#include "tensorboard_event.pb.h"

namespace chunkflow::trainer {
namespace {

constexpr const char* kFileVersion = "brain.Event:2";
constexpr size_t kHeaderBytes = 12;  // u64 length + u32 masked CRC of the length
constexpr size_t kFooterBytes = 4;   // u32 masked CRC of the payload

void put_le(uint64_t value, int bytes, uint8_t* out) {
  for (int i = 0; i < bytes; ++i) out[i] = static_cast<uint8_t>(value >> (8 * i));
}

uint64_t get_le(const uint8_t* in, int bytes) {
  uint64_t value = 0;
  for (int i = 0; i < bytes; ++i) value |= static_cast<uint64_t>(in[i]) << (8 * i);
  return value;
}

using core::host_name;

std::string os_error(int error) { return std::generic_category().message(error); }

}  // namespace

double unix_time_seconds() {
  const auto since_epoch = std::chrono::system_clock::now().time_since_epoch();
  return std::chrono::duration<double>(since_epoch).count();
}

TensorBoardWriter::TensorBoardWriter(const std::string& log_dir) {
  std::error_code error;
  std::filesystem::create_directories(log_dir, error);
  CF_CHECK(!error && std::filesystem::is_directory(log_dir),
           "TensorBoard log directory '", log_dir, "' cannot be created: ",
           error ? error.message() : "a non-directory of that name is in the way");

  // O_EXCL: never truncate another writer's file. A second writer of this process in the same
  // second (a run resumed in-process) takes the next free suffix; TensorBoard reads every
  // events.out.tfevents.* file of the folder.
  const std::string base = core::str_cat(log_dir, "/events.out.tfevents.", static_cast<int64_t>(std::time(nullptr)),
                                         ".", host_name(), ".", ::getpid(), ".chunkflow");
  int fd = -1, open_error = 0;
  for (int attempt = 0; attempt < 100; ++attempt) {
    path_ = attempt == 0 ? base : core::str_cat(base, ".", attempt);
    fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    open_error = errno;
    if (fd >= 0 || open_error != EEXIST) break;
  }
  CF_CHECK(fd >= 0, "cannot create TensorBoard event file '", path_, "': ", os_error(open_error));
  file_ = ::fdopen(fd, "wb");
  if (file_ == nullptr) {
    const int saved = errno;
    ::close(fd);
    CF_FAIL("cannot open TensorBoard event file '", path_, "': ", os_error(saved));
  }

  tensorboard::Event header;
  header.set_wall_time(unix_time_seconds());
  header.set_file_version(kFileVersion);
  try {
    write_record(header.SerializeAsString());
  } catch (...) {
    close_quietly();  // the destructor does not run for a constructor that throws
    throw;
  }
}

TensorBoardWriter::~TensorBoardWriter() { close_quietly(); }

TensorBoardWriter::TensorBoardWriter(TensorBoardWriter&& other) noexcept
    : path_(std::move(other.path_)), file_(other.file_), records_written_(other.records_written_) {
  other.file_ = nullptr;
}

TensorBoardWriter& TensorBoardWriter::operator=(TensorBoardWriter&& other) noexcept {
  if (this != &other) {
    close_quietly();
    path_ = std::move(other.path_);
    file_ = other.file_;
    records_written_ = other.records_written_;
    other.file_ = nullptr;
  }
  return *this;
}

void TensorBoardWriter::close_quietly() noexcept {
  if (file_ == nullptr) return;
  std::fflush(file_);
  ::fsync(::fileno(file_));
  std::fclose(file_);
  file_ = nullptr;
}

void TensorBoardWriter::add_scalar(const std::string& tag, double value, int64_t step,
                                   double wall_time) {
  add_scalars({{tag, value}}, step, wall_time);
}

void TensorBoardWriter::add_scalars(const std::vector<std::pair<std::string, double>>& values,
                                    int64_t step, double wall_time) {
  if (values.empty()) return;
  tensorboard::Event event;
  event.set_wall_time(wall_time);
  event.set_step(step);
  tensorboard::Summary* summary = event.mutable_summary();
  for (const auto& [tag, value] : values) {
    tensorboard::Summary::Value* entry = summary->add_value();
    entry->set_tag(tag);
    entry->set_simple_value(static_cast<float>(value));
  }
  write_record(event.SerializeAsString());
}

void TensorBoardWriter::write_record(const std::string& payload) {
  CF_ASSERT(file_ != nullptr, "TensorBoardWriter used after being moved from");
  // Header, payload and footer in one buffer and one fwrite, so a reader polling the file sees
  // whole records or a short tail, never interleaved pieces.
  std::string record(kHeaderBytes + payload.size() + kFooterBytes, '\0');
  auto* bytes = reinterpret_cast<uint8_t*>(record.data());
  put_le(payload.size(), 8, bytes);
  put_le(core::masked_crc32c(bytes, 8), 4, bytes + 8);
  std::memcpy(bytes + kHeaderBytes, payload.data(), payload.size());
  uint8_t* footer = bytes + kHeaderBytes + payload.size();
  put_le(core::masked_crc32c(payload.data(), payload.size()), 4, footer);

  errno = 0;
  const size_t written = std::fwrite(record.data(), 1, record.size(), file_);
  CF_CHECK(written == record.size() && std::fflush(file_) == 0,
           "cannot write TensorBoard event file '", path_, "': ", os_error(errno));
  ++records_written_;
}

void TensorBoardWriter::flush() {
  CF_ASSERT(file_ != nullptr, "TensorBoardWriter used after being moved from");
  CF_CHECK(std::fflush(file_) == 0, "cannot flush TensorBoard event file '", path_, "': ",
           os_error(errno));
  CF_CHECK(::fsync(::fileno(file_)) == 0, "cannot fsync TensorBoard event file '", path_, "': ",
           os_error(errno));
}

std::vector<TensorBoardEvent> read_tensorboard_events(const std::string& path) {
  const std::string content = core::read_file(path);
  const auto* bytes = reinterpret_cast<const uint8_t*>(content.data());
  std::vector<TensorBoardEvent> events;
  size_t offset = 0;
  while (offset < content.size()) {
    const size_t index = events.size();
    const size_t left = content.size() - offset;
    CF_CHECK(left >= kHeaderBytes, "TensorBoard event file '", path, "': record ", index,
             " at byte ", offset, " is truncated: ", left, " bytes left, a header needs ",
             kHeaderBytes);
    const uint8_t* header = bytes + offset;
    const uint32_t length_crc = static_cast<uint32_t>(get_le(header + 8, 4));
    CF_CHECK(length_crc == core::masked_crc32c(header, 8), "TensorBoard event file '", path,
             "': record ", index, " at byte ", offset, " has a corrupt length (CRC mismatch)");
    const uint64_t length = get_le(header, 8);
    const size_t after_header = left - kHeaderBytes;
    CF_CHECK(after_header >= kFooterBytes && length <= after_header - kFooterBytes,
             "TensorBoard event file '", path, "': record ", index, " at byte ", offset,
             " is truncated: a ", length, "-byte payload and its CRC need ", length + kFooterBytes,
             " bytes, only ", after_header, " follow the header");
    CF_CHECK(length <= static_cast<uint64_t>(INT_MAX), "TensorBoard event file '", path,
             "': record ", index, " at byte ", offset, " has a ", length,
             "-byte payload, more than protobuf parses in one piece");
    const uint8_t* payload = header + kHeaderBytes;
    const uint32_t payload_crc = static_cast<uint32_t>(get_le(payload + length, 4));
    CF_CHECK(payload_crc == core::masked_crc32c(payload, length), "TensorBoard event file '", path,
             "': record ", index, " at byte ", offset, " has a corrupt payload (CRC mismatch)");
    tensorboard::Event event;
    CF_CHECK(event.ParseFromArray(payload, static_cast<int>(length)), "TensorBoard event file '",
             path, "': record ", index, " at byte ", offset, " is not an Event protobuf");
    TensorBoardEvent& read = events.emplace_back();
    read.wall_time = event.wall_time();
    read.step = event.step();
    read.file_version = event.file_version();
    for (const tensorboard::Summary::Value& value : event.summary().value()) {
      if (value.has_simple_value()) read.scalars.emplace_back(value.tag(), value.simple_value());
    }
    offset += kHeaderBytes + length + kFooterBytes;
  }
  return events;
}

}  // namespace chunkflow::trainer
