// TensorBoard event files: a writer of scalar summaries that the real TensorBoard reads, and a
// checking reader for tests and tools. Protobuf stays inside the .cpp: this header is included
// next to LibTorch, whose include/ carries its own, older protobuf headers.
//
// File format (one TFRecord per Event, integers little-endian):
//   u64 payload_length | u32 masked_crc32c(the 8 length bytes) | payload | u32 masked_crc32c(payload)
// where the payload is a serialized chunkflow.tensorboard.Event (trainer/tensorboard_event.proto,
// wire-compatible with TensorFlow's Event). The first record of every file is
// {wall_time, file_version: "brain.Event:2"}.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace chunkflow::trainer {

// Seconds since the Unix epoch (system clock), with sub-second precision; the default
// `wall_time` of the writer's calls.
double unix_time_seconds();

// Appends scalar summaries to a new events file in `log_dir`. Not thread-safe; one writer per
// run, on rank 0.
//
// Durability: every add_* call ends with fflush, so each record reaches the OS at once (a live
// TensorBoard sees it; a crash of the process loses nothing). fsync, which can take milliseconds
// on network filesystems, happens only in flush() and the destructor: a crash of the machine can
// lose what was added since the last flush().
class TensorBoardWriter {
 public:
  // Creates `log_dir` (mkdir -p) and the file
  //   <log_dir>/events.out.tfevents.<unix seconds>.<hostname>.<pid>.chunkflow
  // and writes the file-version record. Throws core::Error naming the path when the directory
  // cannot be created or the file cannot be created or written; the file is never truncated, so
  // a second writer in the same process, directory and second is an error too.
  explicit TensorBoardWriter(const std::string& log_dir);
  // Flushes, fsyncs and closes; errors here are swallowed (call flush() first to see them).
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;
  TensorBoardWriter(TensorBoardWriter&& other) noexcept;
  TensorBoardWriter& operator=(TensorBoardWriter&& other) noexcept;

  // One Event holding one value. `value` is stored as float32 (Summary.Value.simple_value), the
  // precision TensorBoard keeps for scalars anyway; NaN and infinities pass through.
  void add_scalar(const std::string& tag, double value, int64_t step,
                  double wall_time = unix_time_seconds());
  // One Event holding every (tag, value) pair at `step`: one record per training step. An empty
  // list writes nothing.
  void add_scalars(const std::vector<std::pair<std::string, double>>& values, int64_t step,
                   double wall_time = unix_time_seconds());

  // fflush + fsync. Throws core::Error naming the path on failure.
  void flush();

  const std::string& path() const { return path_; }
  // Records written so far, the file-version record included.
  int64_t records_written() const { return records_written_; }

 private:
  // Frames `payload` (a serialized Event) as one TFRecord and appends it.
  void write_record(const std::string& payload);
  void close_quietly() noexcept;

  std::string path_;
  std::FILE* file_ = nullptr;
  int64_t records_written_ = 0;
};

// One Event as read back: the fields the writer sets.
struct TensorBoardEvent {
  double wall_time = 0.0;
  int64_t step = 0;
  std::string file_version;                          // only in a file's first record
  std::vector<std::pair<std::string, float>> scalars;  // Summary values with simple_value set
};

// Every Event in an events file, in order. Checks each record's framing and both CRCs and parses
// its payload; throws core::Error naming the path, the record index and its byte offset on a
// truncated record, a CRC mismatch or a payload that is not an Event. Strict: unlike
// TensorBoard, which waits for a partly written last record, a short tail is an error.
std::vector<TensorBoardEvent> read_tensorboard_events(const std::string& path);

}  // namespace chunkflow::trainer
