// Safetensors: round trips of every dtype, files written and read by the real `safetensors`
// Python library, sharded directories, and a catalogue of malformed headers (each must be a
// core::Error naming the rule, never a crash), plus random byte mutations of a valid file.
#include "models/safetensors.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "core/crc32c.h"
#include "core/error.h"
#include "core/file_io.h"
#include "tests/support/expect_error.h"
#include "tests/support/temp_dir.h"
#include "tests/support/test_seed.h"

namespace chunkflow::models {
namespace {

using chunkflow::testing::contains;
using chunkflow::testing::error_message;

// A raw safetensors file from a header text and a data section.
std::string raw_file(const std::string& header, const std::string& data) {
  std::string bytes;
  uint64_t length = header.size();
  for (int index = 0; index < 8; ++index) bytes.push_back(static_cast<char>((length >> (8 * index)) & 0xff));
  return bytes + header + data;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

std::vector<std::pair<std::string, torch::Tensor>> sample_tensors() {
  torch::manual_seed(7);
  return {{"f32", torch::randn({3, 5})},
          {"f64", torch::randn({2}, torch::kDouble)},
          {"f16", torch::randn({4, 1, 2}).to(torch::kHalf)},
          {"bf16", torch::randn({7}).to(torch::kBFloat16)},
          {"i64", torch::randint(-1000, 1000, {6}, torch::kLong)},
          {"i32", torch::randint(-1000, 1000, {2, 2}, torch::kInt)},
          {"i16", torch::randint(-100, 100, {3}, torch::kShort)},
          {"i8", torch::randint(-100, 100, {3}, torch::kChar)},
          {"u8", torch::randint(0, 255, {5}, torch::kByte)},
          {"bool", torch::randint(0, 2, {4}, torch::kLong).to(torch::kBool)},
          {"scalar", torch::tensor(3.5f)},
          {"empty", torch::zeros({0, 4})}};
}

TEST(SafetensorsTest, RoundTripsEveryDtypeShapeAndMetadata) {
  testing::TempDir dir;
  const auto tensors = sample_tensors();
  const SafetensorsWritten written =
      save_safetensors(dir.file("a.safetensors"), tensors, {{"format", "pt"}, {"note", "x"}});
  // The size and checksum it reports are the file's (checkpoints record them without a re-read).
  const std::string bytes = core::read_file(dir.file("a.safetensors"));
  EXPECT_EQ(written.bytes, bytes.size());
  EXPECT_EQ(written.crc32c, core::crc32c(bytes.data(), bytes.size()));
  const SafetensorsFile file(dir.file("a.safetensors"));
  ASSERT_EQ(file.entries().size(), tensors.size());
  EXPECT_EQ(file.metadata().at("format"), "pt");
  for (size_t index = 0; index < tensors.size(); ++index) {
    const auto& [name, expected] = tensors[index];
    EXPECT_EQ(file.entries()[index].name, name);  // header order = write order
    const torch::Tensor loaded = file.load(name);
    EXPECT_EQ(loaded.scalar_type(), expected.scalar_type()) << name;
    EXPECT_EQ(loaded.sizes(), expected.sizes()) << name;
    EXPECT_TRUE(torch::equal(loaded, expected)) << name;
  }
  EXPECT_TRUE(contains(error_message([&] { file.load("nope"); }), "no tensor named 'nope'"));
}

TEST(SafetensorsTest, NonContiguousTensorsAreWrittenByValue) {
  testing::TempDir dir;
  const torch::Tensor base = torch::arange(12, torch::kFloat).view({3, 4});
  save_safetensors(dir.file("t.safetensors"), {{"t", base.t()}});
  EXPECT_TRUE(torch::equal(SafetensorsFile(dir.file("t.safetensors")).load("t"), base.t()));
}

TEST(SafetensorsTest, InteroperatesWithTheSafetensorsPythonLibrary) {
  testing::TempDir dir;
  save_safetensors(dir.file("ours.safetensors"), sample_tensors(), {{"format", "pt"}});
  // Python reads ours and checks values; then writes its own file that we read.
  const std::string script = dir.file("check.py");
  write_bytes(script, R"(
import sys, torch
from safetensors.torch import load_file, save_file
ours = load_file(sys.argv[1])
torch.manual_seed(7)
assert ours["f32"].shape == (3, 5) and ours["bf16"].dtype == torch.bfloat16, ours.keys()
assert ours["scalar"].item() == 3.5 and ours["empty"].shape == (0, 4)
assert ours["bool"].dtype == torch.bool and ours["u8"].dtype == torch.uint8
save_file({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3),
           "h": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
           "n": torch.tensor([7, 8, 9], dtype=torch.int64)}, sys.argv[2], metadata={"format": "pt"})
)");
  const std::string command = testing::python_executable() + " " + script + " " +
                              dir.file("ours.safetensors") + " " + dir.file("theirs.safetensors");
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  const SafetensorsFile theirs(dir.file("theirs.safetensors"));
  EXPECT_TRUE(torch::equal(theirs.load("w"), torch::arange(6, torch::kFloat).view({2, 3})));
  EXPECT_TRUE(torch::equal(theirs.load("h"), torch::tensor({1.5f, -2.0f}).to(torch::kBFloat16)));
  EXPECT_TRUE(torch::equal(theirs.load("n"), torch::tensor({7, 8, 9}, torch::kLong)));
  EXPECT_EQ(theirs.metadata().at("format"), "pt");
}

TEST(SafetensorsTest, ShardedDirectoriesSplitBySizeAndLoadBack) {
  testing::TempDir dir;
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (int index = 0; index < 7; ++index) {
    tensors.emplace_back("layer." + std::to_string(index), torch::full({100}, static_cast<float>(index)));
  }
  // 400 bytes each, shards of at most 1000 bytes: 2 per shard -> 4 shards.
  const auto written = save_safetensors_sharded(dir.path(), tensors, 1000);
  ASSERT_EQ(written.size(), 5u);
  EXPECT_EQ(written[0], "model-00001-of-00004.safetensors");
  EXPECT_EQ(written.back(), "model.safetensors.index.json");
  const auto loaded = load_safetensors_directory(dir.path());
  ASSERT_EQ(loaded.size(), tensors.size());
  for (const auto& [name, tensor] : tensors) EXPECT_TRUE(torch::equal(loaded.at(name), tensor)) << name;
  const auto some = load_safetensors_directory(dir.path(), [](const std::string& name) { return name == "layer.3"; });
  ASSERT_EQ(some.size(), 1u);

  // Everything fits: a single model.safetensors and no index.
  testing::TempDir single;
  EXPECT_EQ(save_safetensors_sharded(single.path(), tensors, 1 << 20),
            std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(load_safetensors_directory(single.path()).size(), tensors.size());
}

TEST(SafetensorsTest, BrokenIndexFilesAreErrorsNamingTheProblem) {
  testing::TempDir dir;
  save_safetensors(dir.file("model-00001-of-00001.safetensors"), {{"a", torch::ones({2})}});
  const auto index_with = [&](const std::string& weight_map) {
    core::write_file_atomic(dir.file("model.safetensors.index.json"),
                            "{\"metadata\": {}, \"weight_map\": " + weight_map + "}");
  };
  index_with(R"({"a": "model-00001-of-00001.safetensors", "b": "model-00001-of-00001.safetensors"})");
  EXPECT_TRUE(contains(error_message([&] { safetensors_weight_map(dir.path()); }), "which has no such tensor"));
  index_with(R"({"a": "missing.safetensors"})");
  EXPECT_TRUE(contains(error_message([&] { safetensors_weight_map(dir.path()); }), "is missing"));
  index_with(R"({"a": "../model-00001-of-00001.safetensors"})");
  EXPECT_TRUE(contains(error_message([&] { safetensors_weight_map(dir.path()); }), "plain file name"));
  core::write_file_atomic(dir.file("model.safetensors.index.json"), "{not json");
  EXPECT_TRUE(contains(error_message([&] { safetensors_weight_map(dir.path()); }), "not valid JSON"));
  testing::TempDir empty;
  EXPECT_TRUE(contains(error_message([&] { safetensors_weight_map(empty.path()); }),
                       "has neither model.safetensors nor model.safetensors.index.json"));
}

TEST(SafetensorsTest, MalformedHeadersAreRefusedWithTheRule) {
  testing::TempDir dir;
  const std::string path = dir.file("bad.safetensors");
  const std::string eight_bytes(8, '\0');
  const struct {
    std::string bytes, expected;
  } cases[] = {
      {"abc", "too short"},
      {raw_file("{}", "").substr(0, 8) + "{", "exceeds the 1 bytes"},
      {std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8) + "{}", "exceeds the 2 bytes"},
      {raw_file("{not json", ""), "not valid JSON"},
      {raw_file("[1, 2]", ""), "must be a JSON object"},
      {raw_file(R"({"t": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}})", eight_bytes), "unknown dtype \"F33\""},
      {raw_file(R"({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", eight_bytes), "needs 12 bytes but data_offsets hold 8"},
      {raw_file(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}})", eight_bytes), "run past the data section"},
      {raw_file(R"({"t": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", eight_bytes), "non-negative integers"},
      {raw_file(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", eight_bytes), "must not decrease"},
      {raw_file(R"({"t": {"dtype": "F32", "shape": [2]}})", eight_bytes), "needs \"data_offsets\""},
      {raw_file(R"({"t": {"dtype": "F32", "shape": [4294967296, 4294967296, 4294967296], "data_offsets": [0, 8]}})", eight_bytes), "overflows"},
      // A zero dim used to lift the bound: these reached torch::empty and threw c10::Error.
      {raw_file(R"({"t": {"dtype": "F32", "shape": [0, 18446744073709551615], "data_offsets": [0, 0]}})", ""), "overflows"},
      {raw_file(R"({"t": {"dtype": "F32", "shape": [0, 4611686018427387904, 4], "data_offsets": [0, 0]}})", ""), "overflows"},
      {raw_file(R"({"t": 5})", eight_bytes), "must be an object"},
      {raw_file(R"({"a": {"dtype": "U8", "shape": [6], "data_offsets": [0, 6]}, "b": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}})", eight_bytes), "overlap"},
      {raw_file(R"({"__metadata__": {"k": 1}})", ""), "must be a string"},
  };
  for (const auto& c : cases) {
    write_bytes(path, c.bytes);
    const std::string message = error_message([&] { SafetensorsFile file(path); });
    EXPECT_TRUE(contains(message, c.expected)) << "bytes: " << c.bytes;
    EXPECT_TRUE(contains(message, path));
  }
}

TEST(SafetensorsTest, RandomByteMutationsNeverCrash) {
  // Every mutated file either loads completely (all tensors) or throws core::Error.
  testing::TempDir dir;
  save_safetensors(dir.file("good.safetensors"), sample_tensors(), {{"format", "pt"}});
  const std::string good = core::read_file(dir.file("good.safetensors"));
  const uint64_t seed = chunkflow::testing::pick_seed();
  std::printf("seed %llu (replay with CHUNKFLOW_TEST_SEED)\n", static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  int refused = 0;
  for (int trial = 0; trial < 1500; ++trial) {
    std::string bytes = good;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int flip = 0; flip < flips; ++flip) {
      // Mostly the length field and the header, where the parser's decisions are.
      const size_t limit = rng() % 4 == 0 ? bytes.size() : std::min<size_t>(bytes.size(), 400);
      bytes[rng() % limit] = static_cast<char>(rng() & 0xff);
    }
    if (rng() % 8 == 0) bytes.resize(rng() % bytes.size());
    write_bytes(dir.file("m.safetensors"), bytes);
    try {
      const SafetensorsFile file(dir.file("m.safetensors"));
      for (const auto& entry : file.entries()) file.load(entry.name);
    } catch (const core::Error&) {
      ++refused;
    }
  }
  EXPECT_GT(refused, 0);
}

}  // namespace
}  // namespace chunkflow::models
