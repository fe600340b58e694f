// TensorBoard event files: TFRecord framing checked byte by byte, a C++ read-back, the real
// TensorBoard (EventAccumulator from the bootstrap virtualenv) reading the same scalars, and
// corruption and unwritable-location errors that name the file.
#include "trainer/tensorboard_writer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "core/crc32c.h"
#include "core/error.h"
#include "core/file_io.h"
#include "tests/support/temp_dir.h"

namespace chunkflow::trainer {
namespace {

using chunkflow::testing::TempDir;

constexpr int64_t kSteps = 50;
constexpr double kStartTime = 1.7e9;

// The series every test writes: irregular values that float32 must round, one that needs more
// than float's 24 bits, and one written through add_scalar rather than add_scalars.
double loss_at(int64_t step) { return 10.0 / (1.0 + 0.37 * static_cast<double>(step)); }
double learning_rate_at(int64_t step) { return 3e-4 * static_cast<double>(step + 1) / kSteps; }
double tokens_at(int64_t step) { return 1e10 + 12345.0 * static_cast<double>(step); }
double grad_norm_at(int64_t step) { return std::sqrt(static_cast<double>(step) + 0.5); }
double wall_time_at(int64_t step) { return kStartTime + 0.25 * static_cast<double>(step); }

std::map<std::string, double (*)(int64_t)> expected_series() {
  return {{"train/loss", loss_at},
          {"train/learning_rate", learning_rate_at},
          {"train/tokens", tokens_at},
          {"train/grad_norm", grad_norm_at}};
}

std::string write_training_log(const std::string& log_dir) {
  TensorBoardWriter writer(log_dir);
  for (int64_t step = 0; step < kSteps; ++step) {
    writer.add_scalars({{"train/loss", loss_at(step)},
                        {"train/learning_rate", learning_rate_at(step)},
                        {"train/tokens", tokens_at(step)}},
                       step, wall_time_at(step));
    writer.add_scalar("train/grad_norm", grad_norm_at(step), step, wall_time_at(step));
  }
  writer.add_scalars({}, kSteps, wall_time_at(kSteps));  // writes nothing
  EXPECT_EQ(writer.records_written(), 1 + 2 * kSteps);
  writer.flush();
  return writer.path();
}

uint64_t le_bytes(const std::string& bytes, size_t offset, int count) {
  uint64_t value = 0;
  for (int i = 0; i < count; ++i) {
    value |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[offset + i])) << (8 * i);
  }
  return value;
}

std::string error_reading(const std::string& path) {
  try {
    read_tensorboard_events(path);
  } catch (const core::Error& error) {
    return error.what();
  }
  return "";
}

void flip_byte(const std::string& path, size_t offset) {
  std::string content = core::read_file(path);
  ASSERT_LT(offset, content.size());
  content[offset] = static_cast<char>(content[offset] ^ 0x40);
  core::write_file_atomic(path, content);
}

TEST(TensorBoardWriterTest, NamesTheFileAfterTimeHostAndPid) {
  TempDir dir;
  const std::string log_dir = dir.file("runs/exp1");
  TensorBoardWriter writer(log_dir);
  const std::filesystem::path path(writer.path());
  EXPECT_EQ(path.parent_path().string(), log_dir);
  const std::string name = path.filename().string();
  const std::string prefix = "events.out.tfevents.";
  ASSERT_EQ(name.compare(0, prefix.size(), prefix), 0) << name;
  const std::string suffix = "." + std::to_string(::getpid()) + ".chunkflow";
  ASSERT_GT(name.size(), suffix.size());
  EXPECT_EQ(name.substr(name.size() - suffix.size()), suffix) << name;
  const int64_t seconds = std::strtoll(name.c_str() + prefix.size(), nullptr, 10);
  EXPECT_NEAR(static_cast<double>(seconds), unix_time_seconds(), 60.0) << name;
  EXPECT_TRUE(std::filesystem::is_regular_file(path));
}

TEST(TensorBoardWriterTest, FramesEveryRecordAsTfRecordStartingWithTheFileVersion) {
  TempDir dir;
  const std::string path = write_training_log(dir.path());
  const std::string content = core::read_file(path);

  // Walk the framing by hand, independently of read_tensorboard_events.
  size_t offset = 0;
  int64_t records = 0;
  while (offset < content.size()) {
    ASSERT_LE(offset + 12, content.size()) << "record " << records;
    const uint64_t length = le_bytes(content, offset, 8);
    EXPECT_EQ(le_bytes(content, offset + 8, 4), core::masked_crc32c(content.data() + offset, 8))
        << "record " << records;
    ASSERT_LE(offset + 12 + length + 4, content.size()) << "record " << records;
    EXPECT_EQ(le_bytes(content, offset + 12 + length, 4),
              core::masked_crc32c(content.data() + offset + 12, length))
        << "record " << records;
    if (records == 0) {
      // Event{wall_time (field 1, fixed64), file_version (field 3, bytes) "brain.Event:2"}.
      const std::string payload = content.substr(offset + 12, length);
      EXPECT_EQ(static_cast<uint8_t>(payload[0]), 0x09);
      EXPECT_NE(payload.find(std::string("\x1a\x0d") + "brain.Event:2"), std::string::npos);
    }
    offset += 12 + length + 4;
    ++records;
  }
  EXPECT_EQ(offset, content.size());
  EXPECT_EQ(records, 1 + 2 * kSteps);
}

TEST(TensorBoardWriterTest, ReadsBackEveryScalarAsFloat32WithItsStepAndTime) {
  TempDir dir;
  const std::string path = write_training_log(dir.path());
  const std::vector<TensorBoardEvent> events = read_tensorboard_events(path);
  ASSERT_EQ(events.size(), static_cast<size_t>(1 + 2 * kSteps));

  EXPECT_EQ(events[0].file_version, "brain.Event:2");
  EXPECT_TRUE(events[0].scalars.empty());
  EXPECT_NEAR(events[0].wall_time, unix_time_seconds(), 60.0);

  for (int64_t step = 0; step < kSteps; ++step) {
    const TensorBoardEvent& grouped = events[1 + 2 * step];
    const TensorBoardEvent& single = events[2 + 2 * step];
    for (const TensorBoardEvent* event : {&grouped, &single}) {
      EXPECT_EQ(event->step, step);
      EXPECT_EQ(event->wall_time, wall_time_at(step));
      EXPECT_TRUE(event->file_version.empty());
    }
    ASSERT_EQ(grouped.scalars.size(), 3u) << "step " << step;
    EXPECT_EQ(grouped.scalars[0].first, "train/loss");
    EXPECT_EQ(grouped.scalars[0].second, static_cast<float>(loss_at(step)));
    EXPECT_EQ(grouped.scalars[1].first, "train/learning_rate");
    EXPECT_EQ(grouped.scalars[1].second, static_cast<float>(learning_rate_at(step)));
    EXPECT_EQ(grouped.scalars[2].first, "train/tokens");
    EXPECT_EQ(grouped.scalars[2].second, static_cast<float>(tokens_at(step)));
    ASSERT_EQ(single.scalars.size(), 1u);
    EXPECT_EQ(single.scalars[0].first, "train/grad_norm");
    EXPECT_EQ(single.scalars[0].second, static_cast<float>(grad_norm_at(step)));
  }
}

// Runs `python script args...`, returning stdout; stderr goes to `stderr_path`.
std::string run_python(const std::string& script_path, const std::string& argument,
                       const std::string& stderr_path, int* exit_status) {
  const std::string command = "'" + chunkflow::testing::python_executable() + "' '" + script_path +
                              "' '" + argument + "' 2>'" + stderr_path + "'";
  std::FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) {
    *exit_status = -1;
    return "";
  }
  std::string output;
  char buffer[4096];
  size_t count = 0;
  while ((count = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) output.append(buffer, count);
  *exit_status = ::pclose(pipe);
  return output;
}

TEST(TensorBoardWriterTest, RealTensorBoardReadsTheSameTagsStepsAndValues) {
  TempDir dir;
  const std::string log_dir = dir.file("logs");
  write_training_log(log_dir);

  // Values printed with float.hex() so that the comparison is exact.
  const std::string script = dir.file("read_scalars.py");
  core::write_file_atomic(script,
                          "import sys\n"
                          "from tensorboard.backend.event_processing import event_accumulator\n"
                          "acc = event_accumulator.EventAccumulator(sys.argv[1], size_guidance={'scalars': 0})\n"
                          "acc.Reload()\n"
                          "for tag in sorted(acc.Tags()['scalars']):\n"
                          "    for event in acc.Scalars(tag):\n"
                          "        print(tag, event.step, event.value.hex(), event.wall_time.hex())\n");
  int exit_status = 0;
  const std::string stderr_path = dir.file("python.stderr");
  const std::string output = run_python(script, log_dir, stderr_path, &exit_status);
  ASSERT_EQ(exit_status, 0) << "python " << script << " failed:\n"
                            << (core::path_exists(stderr_path) ? core::read_file(stderr_path) : "");

  std::map<std::string, std::vector<std::pair<int64_t, std::pair<double, double>>>> seen;
  std::istringstream lines(output);
  std::string tag, value_hex, wall_time_hex;
  int64_t step = 0;
  while (lines >> tag >> step >> value_hex >> wall_time_hex) {
    seen[tag].push_back({step, {std::strtod(value_hex.c_str(), nullptr),
                                std::strtod(wall_time_hex.c_str(), nullptr)}});
  }

  const auto expected = expected_series();
  ASSERT_EQ(seen.size(), expected.size()) << output;
  for (const auto& [expected_tag, series] : expected) {
    ASSERT_TRUE(seen.count(expected_tag)) << "TensorBoard lacks " << expected_tag << "\n" << output;
    const auto& points = seen[expected_tag];
    ASSERT_EQ(points.size(), static_cast<size_t>(kSteps)) << expected_tag;
    for (int64_t index = 0; index < kSteps; ++index) {
      EXPECT_EQ(points[index].first, index) << expected_tag;
      EXPECT_EQ(points[index].second.first, static_cast<double>(static_cast<float>(series(index))))
          << expected_tag << " at step " << index;
      EXPECT_EQ(points[index].second.second, wall_time_at(index)) << expected_tag;
    }
  }
}

TEST(TensorBoardWriterTest, ReaderReportsAFlippedPayloadByteAsACrcMismatch) {
  TempDir dir;
  const std::string path = write_training_log(dir.path());
  ASSERT_EQ(error_reading(path), "");
  // The last record is train/grad_norm at the last step; hit a byte in its payload.
  const size_t size = core::read_file(path).size();
  flip_byte(path, size - 4 - 3);
  const std::string message = error_reading(path);
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("record " + std::to_string(2 * kSteps)), std::string::npos) << message;
  EXPECT_NE(message.find("corrupt payload (CRC mismatch)"), std::string::npos) << message;
}

TEST(TensorBoardWriterTest, ReaderReportsACorruptLengthAndATruncatedTail) {
  TempDir dir;
  const std::string path = write_training_log(dir.path());
  const std::string original = core::read_file(path);

  flip_byte(path, 0);
  std::string message = error_reading(path);
  EXPECT_NE(message.find("record 0 at byte 0 has a corrupt length (CRC mismatch)"),
            std::string::npos) << message;

  core::write_file_atomic(path, original.substr(0, original.size() - 2));
  message = error_reading(path);
  EXPECT_NE(message.find("record " + std::to_string(2 * kSteps)), std::string::npos) << message;
  EXPECT_NE(message.find("truncated"), std::string::npos) << message;
}

TEST(TensorBoardWriterTest, UnwritableLocationIsAnErrorNamingThePath) {
  TempDir dir;
  // Root ignores permission bits, so block the directory with a regular file instead.
  const std::string blocker = dir.file("not_a_directory");
  core::write_file_atomic(blocker, "x");
  for (const std::string& log_dir : {blocker, blocker + "/runs"}) {
    try {
      TensorBoardWriter writer(log_dir);
      ADD_FAILURE() << "no error for " << log_dir;
    } catch (const core::Error& error) {
      const std::string message = error.what();
      EXPECT_NE(message.find("'" + log_dir + "'"), std::string::npos) << message;
      EXPECT_NE(message.find("cannot be created"), std::string::npos) << message;
    }
  }
}

TEST(TensorBoardWriterTest, MovedWriterKeepsAppendingToTheSameFile) {
  TempDir dir;
  TensorBoardWriter first(dir.path());
  first.add_scalar("a", 1.0, 0, kStartTime);
  TensorBoardWriter second(std::move(first));
  second.add_scalar("a", 2.0, 1, kStartTime);
  second.flush();
  const std::vector<TensorBoardEvent> events = read_tensorboard_events(second.path());
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[2].step, 1);
  EXPECT_EQ(events[2].scalars, (std::vector<std::pair<std::string, float>>{{"a", 2.0f}}));
}

}  // namespace
}  // namespace chunkflow::trainer
