// first_token_outside_vocabulary: finds the first id outside [0, vocab) in sequence order, across
// the ranges of several threads, negative ids included; files whose dtype cannot hold a bad id
// are not read.
#include "data/token_check.h"

#include <gtest/gtest.h>

#include <vector>

#include "tests/support/temp_dir.h"

namespace chunkflow::data {
namespace {

std::string write_dataset(const testing::TempDir& dir, const std::string& name, TokenDType dtype,
                          const std::vector<std::vector<int32_t>>& sequences) {
  const std::string prefix = dir.file(name);
  IndexedDatasetWriter writer(prefix, dtype);
  for (const auto& sequence : sequences) writer.add_sequence(sequence);
  writer.end_document();
  writer.finish();
  return prefix;
}

TEST(TokenCheckTest, FindsTheFirstOutOfRangeIdInSequenceOrder) {
  testing::TempDir dir;
  // Many sequences so that several threads each get a range; bad ids in sequences 700 and 900.
  std::vector<std::vector<int32_t>> sequences(1000, std::vector<int32_t>{1, 2, 3});
  sequences[900][0] = 5000;
  sequences[700][2] = 100;
  const IndexedDataset dataset(write_dataset(dir, "ids", TokenDType::kInt32, sequences));
  const auto found = first_token_outside_vocabulary(dataset, 100);
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->sequence, 700);
  EXPECT_EQ(found->position, 2);
  EXPECT_EQ(found->id, 100);  // vocab_size itself is outside
  EXPECT_FALSE(first_token_outside_vocabulary(dataset, 5001).has_value());
}

TEST(TokenCheckTest, NegativeIdsAreOutsideAndEmptyDatasetsPass) {
  testing::TempDir dir;
  const IndexedDataset negative(write_dataset(dir, "negative", TokenDType::kInt32, {{}, {4, -1, 4}}));
  const auto found = first_token_outside_vocabulary(negative, 10);
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->sequence, 1);
  EXPECT_EQ(found->position, 1);
  EXPECT_EQ(found->id, -1);
  const IndexedDataset empty(write_dataset(dir, "empty", TokenDType::kInt32, {}));
  EXPECT_FALSE(first_token_outside_vocabulary(empty, 10).has_value());
}

TEST(TokenCheckTest, Uint16FilesNeedNoScanForVocabulariesAboveTheirRange) {
  testing::TempDir dir;
  const IndexedDataset dataset(write_dataset(dir, "small", TokenDType::kUInt16, {{65535, 7}}));
  EXPECT_FALSE(first_token_outside_vocabulary(dataset, 65536).has_value());
  const auto found = first_token_outside_vocabulary(dataset, 65535);
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->id, 65535);
}

}  // namespace
}  // namespace chunkflow::data
