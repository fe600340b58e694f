// Megatron indexed dataset: byte layout, round trips for every dtype, and the reader's rejection
// of every kind of corrupt index or data file.
#include "data/indexed_dataset.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/file_io.h"
#include "tests/support/expect_error.h"
#include "tests/support/temp_dir.h"

namespace chunkflow::data {
namespace {

using testing::TempDir;

std::vector<uint8_t> read_bytes(const std::string& path) {
  const std::string content = core::read_file(path);
  return std::vector<uint8_t>(content.begin(), content.end());
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

// Little-endian byte builder, written with shifts so that it is independent of the writer's
// memcpy-based encoding.
struct Bytes {
  std::vector<uint8_t> data;
  Bytes& raw(std::initializer_list<uint8_t> bytes) {
    data.insert(data.end(), bytes);
    return *this;
  }
  Bytes& le(uint64_t value, int width) {
    for (int i = 0; i < width; ++i) data.push_back(static_cast<uint8_t>((value >> (8 * i)) & 0xff));
    return *this;
  }
  Bytes& u8(uint64_t value) { return le(value, 1); }
  Bytes& u16(uint64_t value) { return le(value, 2); }
  Bytes& i32(int64_t value) { return le(static_cast<uint64_t>(value), 4); }
  Bytes& u64(uint64_t value) { return le(value, 8); }
  Bytes& i64(int64_t value) { return le(static_cast<uint64_t>(value), 8); }
};

// Runs `action`, expecting core::Error whose message contains every one of `parts`.
void expect_error(const std::function<void()>& action, std::initializer_list<std::string> parts) {
  chunkflow::testing::expect_error_mentions(action, parts);
}

// Writes three sequences of int32 ([10, 11, 12], [13], [14, 15]) in documents {0, 1}, {2}.
std::string write_small_dataset(const TempDir& dir, const std::string& name = "data",
                                TokenDType dtype = TokenDType::kInt32) {
  const std::string prefix = dir.file(name);
  IndexedDatasetWriter writer(prefix, dtype);
  writer.add_sequence(std::vector<int32_t>{10, 11, 12});
  writer.add_sequence(std::vector<int32_t>{13});
  writer.end_document();
  writer.add_sequence(std::vector<int32_t>{14, 15});
  writer.end_document();
  writer.finish();
  return prefix;
}

// Byte offsets inside the .idx of write_small_dataset (S = 3 sequences, D = 3 document indices).
constexpr size_t kVersionAt = 9;
constexpr size_t kDTypeAt = 17;
constexpr size_t kSequenceCountAt = 18;
constexpr size_t kDocumentCountAt = 26;
constexpr size_t kLengthsAt = 34;
constexpr size_t kPointersAt = kLengthsAt + 3 * 4;
constexpr size_t kDocumentsAt = kPointersAt + 3 * 8;

void patch_u64(std::vector<uint8_t>& bytes, size_t at, uint64_t value) {
  for (size_t i = 0; i < 8; ++i) bytes[at + i] = static_cast<uint8_t>(value >> (8 * i));
}
void patch_i32(std::vector<uint8_t>& bytes, size_t at, int32_t value) {
  const auto bits = static_cast<uint32_t>(value);
  for (size_t i = 0; i < 4; ++i) bytes[at + i] = static_cast<uint8_t>(bits >> (8 * i));
}

// Applies `corrupt` to the .idx of a fresh small dataset and expects the reader to name the
// .idx file and every one of `parts`.
void expect_corrupt_index(const std::function<void(std::vector<uint8_t>&)>& corrupt,
                          std::initializer_list<std::string> parts) {
  TempDir dir;
  const std::string prefix = write_small_dataset(dir);
  std::vector<uint8_t> idx = read_bytes(idx_path(prefix));
  ASSERT_EQ(idx.size(), kDocumentsAt + 3 * 8);
  corrupt(idx);
  write_bytes(idx_path(prefix), idx);
  std::vector<std::string> all(parts);
  all.push_back(idx_path(prefix));
  chunkflow::testing::expect_error_mentions([&] { IndexedDataset dataset(prefix); }, all);
}

TEST(IndexedDatasetTest, WriterOutputMatchesHandBuiltMegatronBytes) {
  TempDir dir;
  const std::string prefix = dir.file("tokens");
  IndexedDatasetWriter writer(prefix, TokenDType::kUInt16);
  writer.add_sequence(std::vector<int32_t>{1, 2, 3});
  writer.add_sequence(std::vector<int32_t>{65535});
  writer.end_document();
  writer.add_sequence(std::vector<int32_t>{});
  writer.finish();

  Bytes idx;
  idx.raw({'M', 'M', 'I', 'D', 'I', 'D', 'X', 0, 0})
      .u64(1)        // version
      .u8(8)         // dtype code: uint16
      .u64(3)        // sequence_count
      .u64(3)        // document_count = documents + 1
      .i32(3).i32(1).i32(0)        // lengths
      .i64(0).i64(6).i64(8)        // byte pointers
      .i64(0).i64(2).i64(3);       // document indices
  Bytes bin;
  bin.u16(1).u16(2).u16(3).u16(65535);

  EXPECT_EQ(read_bytes(idx_path(prefix)), idx.data);
  EXPECT_EQ(read_bytes(bin_path(prefix)), bin.data);
}

TEST(IndexedDatasetTest, ReadsHandBuiltMegatronFiles) {
  TempDir dir;
  const std::string prefix = dir.file("megatron");
  Bytes idx;
  idx.raw({'M', 'M', 'I', 'D', 'I', 'D', 'X', 0, 0}).u64(1).u8(4).u64(2).u64(2);
  idx.i32(2).i32(3).i64(0).i64(8).i64(0).i64(2);
  Bytes bin;
  bin.i32(7).i32(-1).i32(100000).i32(0).i32(2147483647);
  write_bytes(idx_path(prefix), idx.data);
  write_bytes(bin_path(prefix), bin.data);

  const IndexedDataset dataset(prefix);
  EXPECT_EQ(dataset.dtype(), TokenDType::kInt32);
  EXPECT_EQ(dataset.size(), 2);
  EXPECT_EQ(dataset.total_tokens(), 5);
  EXPECT_EQ(dataset.read(0), (std::vector<int32_t>{7, -1}));
  EXPECT_EQ(dataset.read(1), (std::vector<int32_t>{100000, 0, 2147483647}));
  EXPECT_EQ(dataset.document_indices(), (std::vector<int64_t>{0, 2}));
}

TEST(IndexedDatasetTest, RoundTripsEveryDTypeWithEmptyAndSingleTokenSequences) {
  struct Case {
    TokenDType dtype;
    int64_t low, high;
  };
  constexpr int64_t kMin = std::numeric_limits<int32_t>::min();
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  const Case cases[] = {
      {TokenDType::kUInt8, 0, 255},          {TokenDType::kInt8, -128, 127},
      {TokenDType::kInt16, -32768, 32767},   {TokenDType::kUInt16, 0, 65535},
      {TokenDType::kInt32, kMin, kMax},      {TokenDType::kInt64, kMin, kMax},
      {TokenDType::kFloat32, -(1 << 24), 1 << 24}, {TokenDType::kFloat64, kMin, kMax},
  };
  for (const Case& test : cases) {
    SCOPED_TRACE(dtype_name(test.dtype));
    TempDir dir;
    const std::string prefix = dir.file("round_trip");
    std::mt19937_64 rng(static_cast<uint64_t>(test.dtype));
    std::uniform_int_distribution<int64_t> value(test.low, test.high);
    std::uniform_int_distribution<int64_t> length(2, 50);
    std::vector<std::vector<int32_t>> sequences;
    sequences.push_back({static_cast<int32_t>(test.low), static_cast<int32_t>(test.high)});
    sequences.push_back({});
    sequences.push_back({static_cast<int32_t>(value(rng))});
    for (int i = 0; i < 20; ++i) {
      std::vector<int32_t> tokens(static_cast<size_t>(length(rng)));
      for (int32_t& token : tokens) token = static_cast<int32_t>(value(rng));
      sequences.push_back(tokens);
    }
    IndexedDatasetWriter writer(prefix, test.dtype);
    int64_t total = 0;
    for (const auto& tokens : sequences) {
      writer.add_sequence(tokens);
      writer.end_document();
      total += static_cast<int64_t>(tokens.size());
    }
    EXPECT_EQ(writer.sequences(), static_cast<int64_t>(sequences.size()));
    EXPECT_EQ(writer.tokens(), total);
    writer.finish();

    const IndexedDataset dataset(prefix);
    EXPECT_EQ(dataset.dtype(), test.dtype);
    ASSERT_EQ(dataset.size(), static_cast<int64_t>(sequences.size()));
    EXPECT_EQ(dataset.total_tokens(), total);
    EXPECT_EQ(static_cast<int64_t>(std::filesystem::file_size(bin_path(prefix))),
              total * static_cast<int64_t>(dtype_size(test.dtype)));
    for (size_t s = 0; s < sequences.size(); ++s) {
      EXPECT_EQ(dataset.length(static_cast<int64_t>(s)), static_cast<int64_t>(sequences[s].size()));
      EXPECT_EQ(dataset.lengths()[s], static_cast<int32_t>(sequences[s].size()));
      EXPECT_EQ(dataset.read(static_cast<int64_t>(s)), sequences[s]) << "sequence " << s;
    }
  }
}

TEST(IndexedDatasetTest, ReadsASubrangeAndRejectsRangesOutsideTheSequence) {
  TempDir dir;
  const std::string prefix = write_small_dataset(dir, "data", TokenDType::kUInt16);
  const IndexedDataset dataset(prefix);
  int32_t out[2] = {-1, -1};
  dataset.read(0, 1, 2, out);
  EXPECT_EQ(out[0], 11);
  EXPECT_EQ(out[1], 12);
  dataset.read(0, 3, 0, out);  // empty range at the end is fine
  expect_error([&] { dataset.read(0, 2, 2, out); }, {"sequence 0", "3 tokens"});
  expect_error([&] { dataset.read(0, -1, 1, out); }, {"offset -1"});
  expect_error([&] { dataset.read(3, 0, 0, out); }, {"sequence 3 out of range", "3 sequences"});
  expect_error([&] { (void)dataset.length(-1); }, {"sequence -1 out of range"});
}

TEST(IndexedDatasetTest, DocumentIndicesFollowEndDocumentAndFinishClosesTheLastDocument) {
  TempDir dir;
  const std::string prefix = dir.file("docs");
  IndexedDatasetWriter writer(prefix, TokenDType::kInt32);
  const std::vector<int32_t> tokens = {1, 2};
  writer.add_sequence(tokens);
  writer.add_sequence(tokens);
  writer.end_document();
  EXPECT_EQ(writer.documents(), 1);
  writer.add_sequence(tokens);
  writer.end_document();
  writer.add_sequence(tokens);
  writer.add_sequence(tokens);  // left open: finish() must close it
  writer.finish();

  const IndexedDataset dataset(prefix);
  EXPECT_EQ(dataset.document_indices(), (std::vector<int64_t>{0, 2, 3, 5}));
  EXPECT_EQ(dataset.documents(), 3);
}

TEST(IndexedDatasetTest, EmptyDatasetHasOnlyTheLeadingDocumentIndex) {
  TempDir dir;
  const std::string prefix = dir.file("empty");
  IndexedDatasetWriter writer(prefix, TokenDType::kUInt16);
  writer.finish();
  EXPECT_EQ(std::filesystem::file_size(idx_path(prefix)), 34u + 8u);
  const IndexedDataset dataset(prefix);
  EXPECT_EQ(dataset.size(), 0);
  EXPECT_EQ(dataset.documents(), 0);
  EXPECT_EQ(dataset.total_tokens(), 0);
}

TEST(IndexedDatasetTest, RejectsBadMagic) {
  expect_corrupt_index([](std::vector<uint8_t>& idx) { idx[0] = 'X'; }, {"bad magic", "XMIDIDX"});
}

TEST(IndexedDatasetTest, RejectsUnsupportedVersion) {
  expect_corrupt_index([](std::vector<uint8_t>& idx) { patch_u64(idx, kVersionAt, 2); },
                       {"unsupported version 2"});
}

TEST(IndexedDatasetTest, RejectsUnknownDTypeCode) {
  expect_corrupt_index([](std::vector<uint8_t>& idx) { idx[kDTypeAt] = 9; },
                       {"unknown dtype code 9"});
  expect_corrupt_index([](std::vector<uint8_t>& idx) { idx[kDTypeAt] = 0; },
                       {"unknown dtype code 0"});
}

TEST(IndexedDatasetTest, RejectsTruncatedIndex) {
  expect_corrupt_index([](std::vector<uint8_t>& idx) { idx.resize(idx.size() - 4); },
                       {"document_count 3", "truncated"});
  expect_corrupt_index([](std::vector<uint8_t>& idx) { idx.resize(kLengthsAt + 5); },
                       {"sequence_count 3", "truncated"});
  expect_corrupt_index([](std::vector<uint8_t>& idx) { idx.resize(20); }, {"truncated header"});
  expect_corrupt_index([](std::vector<uint8_t>& idx) { idx.resize(4); }, {"too short"});
}

TEST(IndexedDatasetTest, RejectsIndexWithTrailingBytes) {
  expect_corrupt_index([](std::vector<uint8_t>& idx) { idx.insert(idx.end(), {0, 0, 0}); },
                       {"3 trailing bytes", "exactly 94"});
}

TEST(IndexedDatasetTest, RejectsHugeCountsWithoutOverflowOrOutOfBoundsReads) {
  // 12 * 2^62 wraps around in 64 bits; the reader must not be fooled into a small product.
  expect_corrupt_index(
      [](std::vector<uint8_t>& idx) { patch_u64(idx, kSequenceCountAt, 1ull << 62); },
      {"sequence_count 4611686018427387904"});
  expect_corrupt_index(
      [](std::vector<uint8_t>& idx) { patch_u64(idx, kSequenceCountAt, ~0ull); },
      {"sequence_count 18446744073709551615"});
  expect_corrupt_index(
      [](std::vector<uint8_t>& idx) { patch_u64(idx, kDocumentCountAt, (1ull << 61) + 3); },
      {"document_count 2305843009213693955"});
}

TEST(IndexedDatasetTest, RejectsNegativeLength) {
  expect_corrupt_index([](std::vector<uint8_t>& idx) { patch_i32(idx, kLengthsAt + 4, -5); },
                       {"sequence 1 has negative length -5"});
}

TEST(IndexedDatasetTest, RejectsPointerThatDoesNotFollowThePreviousSequence) {
  expect_corrupt_index([](std::vector<uint8_t>& idx) { patch_u64(idx, kPointersAt + 8, 16); },
                       {"sequence 1 has pointer 16 but the previous sequences end at 12"});
}

TEST(IndexedDatasetTest, RejectsLengthsThatRunPastTheDataFile) {
  TempDir dir;
  const std::string prefix = write_small_dataset(dir);
  std::vector<uint8_t> idx = read_bytes(idx_path(prefix));
  patch_i32(idx, kLengthsAt + 8, 1000);  // last sequence claims 1000 tokens
  write_bytes(idx_path(prefix), idx);
  expect_error([&] { IndexedDataset dataset(prefix); },
               {bin_path(prefix), "truncated", "sequence 2", "ends at byte 4016", "24 bytes"});
}

TEST(IndexedDatasetTest, RejectsDocumentIndicesOutOfRangeOrDecreasing) {
  expect_corrupt_index([](std::vector<uint8_t>& idx) { patch_u64(idx, kDocumentsAt, 1); },
                       {"document index 0 is 1, expected 0"});
  expect_corrupt_index([](std::vector<uint8_t>& idx) { patch_u64(idx, kDocumentsAt + 16, 4); },
                       {"document index 2 is 4", "sequence count 3"});
  expect_corrupt_index([](std::vector<uint8_t>& idx) { patch_u64(idx, kDocumentsAt + 16, 2); },
                       {"last document index is 2", "sequence count 3"});
  expect_corrupt_index([](std::vector<uint8_t>& idx) { patch_u64(idx, kDocumentsAt + 8, ~0ull); },
                       {"document index 1 is -1"});
  expect_corrupt_index(
      [](std::vector<uint8_t>& idx) {
        patch_u64(idx, kDocumentCountAt, 0);
        idx.resize(idx.size() - 24);
      },
      {"document_count is 0"});
}

TEST(IndexedDatasetTest, RejectsTruncatedOrOversizedDataFile) {
  TempDir dir;
  const std::string prefix = write_small_dataset(dir);
  std::vector<uint8_t> bin = read_bytes(bin_path(prefix));
  ASSERT_EQ(bin.size(), 24u);
  bin.resize(22);
  write_bytes(bin_path(prefix), bin);
  expect_error([&] { IndexedDataset dataset(prefix); },
               {bin_path(prefix), "truncated", "sequence 2", "ends at byte 24", "22 bytes"});

  bin.resize(30);
  write_bytes(bin_path(prefix), bin);
  expect_error([&] { IndexedDataset dataset(prefix); },
               {bin_path(prefix), "30 bytes", "6 tokens of int32 = 24 bytes"});
}

TEST(IndexedDatasetTest, MissingFilesAreNamed) {
  TempDir dir;
  const std::string prefix = write_small_dataset(dir);
  std::filesystem::remove(bin_path(prefix));
  expect_error([&] { IndexedDataset dataset(prefix); }, {bin_path(prefix), "does not exist"});
  expect_error([&] { IndexedDataset dataset(dir.file("nothing")); },
               {dir.file("nothing.idx"), "does not exist"});
}

TEST(IndexedDatasetTest, FloatDataWithNonIntegralValueFailsOnRead) {
  for (const TokenDType dtype : {TokenDType::kFloat32, TokenDType::kFloat64}) {
    SCOPED_TRACE(dtype_name(dtype));
    TempDir dir;
    const std::string prefix = write_small_dataset(dir, "floats", dtype);
    std::vector<uint8_t> bin = read_bytes(bin_path(prefix));
    // Sequence 2 starts after 4 tokens; overwrite its second token (position 1).
    const size_t at = 5 * dtype_size(dtype);
    if (dtype == TokenDType::kFloat32) {
      const float value = 2.5f;
      std::memcpy(bin.data() + at, &value, sizeof(value));
    } else {
      const double value = 2.5;
      std::memcpy(bin.data() + at, &value, sizeof(value));
    }
    write_bytes(bin_path(prefix), bin);
    const IndexedDataset dataset(prefix);
    EXPECT_EQ(dataset.read(0), (std::vector<int32_t>{10, 11, 12}));
    expect_error([&] { (void)dataset.read(2); },
                 {bin_path(prefix), "sequence 2 position 1", "2.5", "not a token id"});
  }
}

TEST(IndexedDatasetTest, FloatDataRejectsInfinityAndInt64DataRejectsValuesBeyondInt32) {
  TempDir dir;
  const std::string float_prefix = write_small_dataset(dir, "floats", TokenDType::kFloat64);
  std::vector<uint8_t> bin = read_bytes(bin_path(float_prefix));
  const double infinity = std::numeric_limits<double>::infinity();
  std::memcpy(bin.data(), &infinity, sizeof(infinity));
  write_bytes(bin_path(float_prefix), bin);
  expect_error([&] { (void)IndexedDataset(float_prefix).read(0); },
               {"sequence 0 position 0", "inf"});

  const std::string wide_prefix = write_small_dataset(dir, "wide", TokenDType::kInt64);
  bin = read_bytes(bin_path(wide_prefix));
  const int64_t huge = int64_t{1} << 40;
  std::memcpy(bin.data() + 8, &huge, sizeof(huge));
  write_bytes(bin_path(wide_prefix), bin);
  expect_error([&] { (void)IndexedDataset(wide_prefix).read(0); },
               {"sequence 0 position 1", "1099511627776", "int32"});
}

TEST(IndexedDatasetTest, WriterDestroyedWithoutFinishLeavesNoFilesAndKeepsTheOldDataset) {
  TempDir dir;
  {
    IndexedDatasetWriter writer(dir.file("fresh"), TokenDType::kInt32);
    writer.add_sequence(std::vector<int32_t>{1, 2, 3});
    writer.end_document();
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir.path())) << "temporary or final files were left";

  const std::string prefix = write_small_dataset(dir, "old");
  const std::vector<uint8_t> old_idx = read_bytes(idx_path(prefix));
  const std::vector<uint8_t> old_bin = read_bytes(bin_path(prefix));
  {
    IndexedDatasetWriter writer(prefix, TokenDType::kUInt8);
    writer.add_sequence(std::vector<int32_t>{9, 9, 9, 9, 9, 9, 9});
    writer.end_document();
  }
  EXPECT_EQ(read_bytes(idx_path(prefix)), old_idx);
  EXPECT_EQ(read_bytes(bin_path(prefix)), old_bin);
  size_t files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    (void)entry;
    ++files;
  }
  EXPECT_EQ(files, 2u) << "only old.bin and old.idx should remain";
  EXPECT_EQ(IndexedDataset(prefix).read(0), (std::vector<int32_t>{10, 11, 12}));
}

TEST(IndexedDatasetTest, WriterRejectsValuesTheDTypeCannotHoldAndStaysUsable) {
  TempDir dir;
  const std::string prefix = dir.file("narrow");
  IndexedDatasetWriter writer(prefix, TokenDType::kUInt16);
  writer.add_sequence(std::vector<int32_t>{1, 2});
  expect_error([&] { writer.add_sequence(std::vector<int32_t>{5, 65536}); },
               {bin_path(prefix), "sequence 1 position 1", "65536", "uint16", "0..65535"});
  expect_error([&] { writer.add_sequence(std::vector<int32_t>{-1}); }, {"-1", "uint16"});
  EXPECT_EQ(writer.sequences(), 1);
  EXPECT_EQ(writer.tokens(), 2);
  writer.add_sequence(std::vector<int32_t>{65535});
  writer.finish();
  const IndexedDataset dataset(prefix);
  ASSERT_EQ(dataset.size(), 2);
  EXPECT_EQ(dataset.read(1), (std::vector<int32_t>{65535}));

  IndexedDatasetWriter int8_writer(dir.file("int8"), TokenDType::kInt8);
  expect_error([&] { int8_writer.add_sequence(std::vector<int32_t>{128}); }, {"128", "int8"});
  IndexedDatasetWriter float_writer(dir.file("f32"), TokenDType::kFloat32);
  expect_error([&] { float_writer.add_sequence(std::vector<int32_t>{(1 << 24) + 1}); },
               {"16777217", "float32"});
}

TEST(IndexedDatasetTest, DTypeHelpersFollowMegatron) {
  EXPECT_EQ(dtype_for_vocab(32000), TokenDType::kUInt16);
  EXPECT_EQ(dtype_for_vocab(65499), TokenDType::kUInt16);
  EXPECT_EQ(dtype_for_vocab(65500), TokenDType::kInt32);
  EXPECT_EQ(dtype_for_vocab(151936), TokenDType::kInt32);
  EXPECT_EQ(static_cast<int>(TokenDType::kUInt16), 8);
  EXPECT_EQ(static_cast<int>(TokenDType::kFloat32), 7);
  for (const char* name :
       {"uint8", "int8", "int16", "int32", "int64", "float64", "float32", "uint16"}) {
    EXPECT_STREQ(dtype_name(parse_dtype(name)), name);
  }
  EXPECT_EQ(dtype_size(TokenDType::kUInt16), 2u);
  EXPECT_EQ(dtype_size(TokenDType::kFloat64), 8u);
  expect_error([] { (void)parse_dtype("unit16"); }, {"unknown token dtype 'unit16'", "uint16"});
  EXPECT_TRUE(fits_dtype(TokenDType::kFloat32, int64_t{1} << 30));
  EXPECT_FALSE(fits_dtype(TokenDType::kFloat32, (int64_t{1} << 30) + 1));
  EXPECT_TRUE(fits_dtype(TokenDType::kFloat64, std::numeric_limits<int32_t>::max()));
}

// Writes a uint8 mask dataset with the given sequences.
void write_mask(const std::string& prefix, const std::vector<std::vector<int32_t>>& sequences,
                TokenDType dtype = TokenDType::kUInt8) {
  IndexedDatasetWriter writer(prefix, dtype);
  for (const auto& values : sequences) {
    writer.add_sequence(values);
    writer.end_document();
  }
  writer.finish();
}

TEST(IndexedDatasetTest, LossMaskReadsZerosAndOnesMatchingTheTokenLengths) {
  TempDir dir;
  const std::string prefix = write_small_dataset(dir);
  write_mask(loss_mask_prefix(prefix), {{0, 1, 1}, {1}, {0, 0}});
  const IndexedDataset tokens(prefix);
  const LossMaskDataset mask(loss_mask_prefix(prefix), tokens);
  EXPECT_EQ(mask.read(0), (std::vector<uint8_t>{0, 1, 1}));
  EXPECT_EQ(mask.read(2), (std::vector<uint8_t>{0, 0}));
  uint8_t out = 7;
  mask.read(0, 2, 1, &out);
  EXPECT_EQ(out, 1);
  expect_error([&] { mask.read(1, 1, 1, &out); }, {"sequence 1"});
}

TEST(IndexedDatasetTest, LossMaskWithDifferentLengthIsRejectedNamingBothFiles) {
  TempDir dir;
  const std::string prefix = write_small_dataset(dir);
  write_mask(loss_mask_prefix(prefix), {{0, 1, 1}, {1, 1}, {0, 0}});
  const IndexedDataset tokens(prefix);
  expect_error([&] { LossMaskDataset mask(loss_mask_prefix(prefix), tokens); },
               {idx_path(loss_mask_prefix(prefix)), idx_path(prefix),
                "sequence 1 has length 2", "has length 1"});

  write_mask(loss_mask_prefix(prefix), {{0, 1, 1}, {1}});
  expect_error([&] { LossMaskDataset mask(loss_mask_prefix(prefix), tokens); },
               {"2 sequences", "has 3"});
}

TEST(IndexedDatasetTest, LossMaskMustBeUint8WithValuesZeroOrOne) {
  TempDir dir;
  const std::string prefix = write_small_dataset(dir);
  const IndexedDataset tokens(prefix);
  write_mask(loss_mask_prefix(prefix), {{0, 1, 1}, {1}, {0, 0}}, TokenDType::kInt32);
  expect_error([&] { LossMaskDataset mask(loss_mask_prefix(prefix), tokens); },
               {"must have dtype uint8", "int32"});

  write_mask(loss_mask_prefix(prefix), {{0, 1, 1}, {1}, {0, 2}});
  const LossMaskDataset mask(loss_mask_prefix(prefix), tokens);  // values are checked lazily
  EXPECT_EQ(mask.read(0), (std::vector<uint8_t>{0, 1, 1}));
  expect_error([&] { (void)mask.read(2); },
               {bin_path(loss_mask_prefix(prefix)), "sequence 2 position 1", "value 2"});
}

}  // namespace
}  // namespace chunkflow::data
