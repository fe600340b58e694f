// Synthetic long-tail data: the length shape, the copy structure and the written dataset.
#include "data/synthetic.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "core/error.h"
#include "data/dataset_stats.h"
#include "data/indexed_dataset.h"
#include "tests/support/temp_dir.h"

namespace chunkflow::data {
namespace {

TEST(SyntheticTest, LengthsHaveTheLongTailOfChatData) {
  SynthOptions options;
  options.sequences = 200000;
  options.max_length = 262144;
  const auto lengths = sample_longtail_lengths(options);
  std::vector<int32_t> as_int32(lengths.begin(), lengths.end());
  const LengthSummary summary = summarize_lengths(as_int32);
  EXPECT_GT(summary.share_below_4k, 0.99) << "over 99% below 4K tokens, as LMSys-Chat-1M";
  EXPECT_LT(summary.share_below_4k, 0.999) << "but a real tail";
  EXPECT_GT(summary.max, 100000) << "a few reach hundreds of K";
  EXPECT_LE(summary.max, options.max_length);
  EXPECT_GE(summary.min, 2);
  EXPECT_GT(summary.p50, 120);
  EXPECT_LT(summary.p50, 320);
}

TEST(SyntheticTest, ScaleShrinksLengthsAndSeedDeterminesThem) {
  SynthOptions options;
  options.sequences = 5000;
  options.scale = 0.25;
  options.max_length = 16384;
  const auto first = sample_longtail_lengths(options);
  EXPECT_EQ(first, sample_longtail_lengths(options));
  EXPECT_LE(*std::max_element(first.begin(), first.end()), 16384);
  std::vector<int32_t> as_int32(first.begin(), first.end());
  EXPECT_LT(summarize_lengths(as_int32).p50, 80);
  options.seed = 2;
  EXPECT_NE(first, sample_longtail_lengths(options));
}

TEST(SyntheticTest, SecondHalfRepeatsTheFirstSoFarTokensArePredictable) {
  core::Rng rng(5);
  std::vector<int32_t> tokens;
  for (const int64_t length : {0, 1, 2, 3, 4, 5, 10, 11, 1000, 4097}) {
    synthesize_sequence(length, 100, rng, tokens);
    ASSERT_EQ(static_cast<int64_t>(tokens.size()), length);
    if (length == 0) continue;
    EXPECT_EQ(tokens[0], kBosToken);
    const int64_t start = copy_start(length);
    for (int64_t i = 1; i < length; ++i) {
      ASSERT_GE(tokens[static_cast<size_t>(i)], 0);
      ASSERT_LT(tokens[static_cast<size_t>(i)], 100);
    }
    if (start < length) {
      EXPECT_EQ(tokens[static_cast<size_t>(start - 1)], kCopyToken);
      for (int64_t i = start; i < length; ++i) {
        ASSERT_EQ(tokens[static_cast<size_t>(i)], tokens[static_cast<size_t>(i - start + 1)]) << "length " << length;
      }
      // The copied part is the later half: at least half the span precedes it.
      EXPECT_GE(start, length / 2);
    }
    if (start - 2 <= 98) {  // the span fits the 98 content ids: drawn without replacement
      std::set<int32_t> span(tokens.begin() + 1, tokens.begin() + std::max<int64_t>(1, start - 1));
      EXPECT_EQ(static_cast<int64_t>(span.size()), std::max<int64_t>(0, start - 2)) << "length " << length;
      EXPECT_EQ(span.count(kBosToken) + span.count(kCopyToken), 0u);
    }
  }
}

TEST(SyntheticTest, LongSpansStayDistinctWhenTheVocabularyAllows) {
  core::Rng rng(9);
  std::vector<int32_t> tokens;
  for (const int64_t length : {40, 3000, 4001}) {  // sparse and dense draws from 2046 ids
    synthesize_sequence(length, 2048, rng, tokens);
    const int64_t start = copy_start(length);
    const std::set<int32_t> span(tokens.begin() + 1, tokens.begin() + (start - 1));
    EXPECT_EQ(static_cast<int64_t>(span.size()), start - 2) << "length " << length;
  }
}

TEST(SyntheticTest, WritesAReadableIndexedDataset) {
  testing::TempDir dir;
  SynthOptions options;
  options.sequences = 300;
  options.scale = 0.1;
  options.max_length = 2048;
  options.vocab_size = 70000;  // needs int32 storage
  const SynthSummary summary = write_synthetic_dataset(dir.file("sub/longtail"), options, false);
  const IndexedDataset dataset(dir.file("sub/longtail"));
  EXPECT_EQ(dataset.size(), 300);
  EXPECT_EQ(dataset.total_tokens(), summary.tokens);
  EXPECT_EQ(dataset.dtype(), TokenDType::kInt32);
  const auto lengths = sample_longtail_lengths(options);
  for (int64_t s = 0; s < dataset.size(); ++s) ASSERT_EQ(dataset.length(s), lengths[static_cast<size_t>(s)]);
  const auto first = dataset.read(0);
  EXPECT_EQ(first[0], kBosToken);
}

TEST(SyntheticTest, RejectsOptionsOutOfRange) {
  SynthOptions options;
  options.sequences = 0;
  EXPECT_THROW(options.validate(), core::Error);
  options = SynthOptions{};
  options.vocab_size = 2;
  EXPECT_THROW(options.validate(), core::Error);
  options = SynthOptions{};
  options.max_length = 1000;  // below the tail's start at scale 1
  try {
    options.validate();
    FAIL();
  } catch (const core::Error& error) {
    EXPECT_NE(std::string(error.what()).find("--max-length"), std::string::npos);
  }
}

}  // namespace
}  // namespace chunkflow::data
