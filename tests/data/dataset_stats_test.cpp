// Dataset statistics: summaries, histogram bins, and the batching comparison on known inputs.
#include "data/dataset_stats.h"

#include <gtest/gtest.h>

#include "core/error.h"

namespace chunkflow::data {
namespace {

TEST(DatasetStatsTest, SummaryPercentilesAndShareBelow4K) {
  std::vector<int32_t> lengths;
  for (int32_t i = 1; i <= 100; ++i) lengths.push_back(i);
  lengths.push_back(5000);
  const LengthSummary summary = summarize_lengths(lengths);
  EXPECT_EQ(summary.sequences, 101);
  EXPECT_EQ(summary.tokens, 5050 + 5000);
  EXPECT_EQ(summary.min, 1);
  EXPECT_EQ(summary.max, 5000);
  EXPECT_EQ(summary.p50, 51);
  EXPECT_NEAR(summary.share_below_4k, 100.0 / 101.0, 1e-12);
}

TEST(DatasetStatsTest, HistogramUsesPowerOfTwoBins) {
  const std::vector<int32_t> lengths = {0, 1, 2, 3, 4, 7, 8, 1000};
  const auto bins = length_histogram(lengths);
  ASSERT_EQ(bins.size(), 11u);  // [0,1) [1,2) [2,4) [4,8) [8,16) ... [512,1024)
  EXPECT_EQ(bins[0].sequences, 1);
  EXPECT_EQ(bins[2].lower, 2);
  EXPECT_EQ(bins[2].upper, 4);
  EXPECT_EQ(bins[2].sequences, 2);
  EXPECT_EQ(bins[3].sequences, 2);
  EXPECT_EQ(bins[10].lower, 512);
  EXPECT_EQ(bins[10].tokens, 1000);
  const std::string text = histogram_text(bins);
  EXPECT_NE(text.find("512-1023"), std::string::npos) << text;
  const std::string svg = histogram_svg(bins, "a <title>");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("a &lt;title&gt;"), std::string::npos);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
}

TEST(DatasetStatsTest, ComparesChunkingWithPaddingAndPacking) {
  // One global batch, no shuffle: lengths 10, 2, 2, 2 with chunk_size 4.
  configs::DataConfig data;
  data.batch_tokens = 0;
  data.batch_sequences = 4;
  data.shuffle = false;
  ComparisonOptions options;
  options.chunk_size = 4;
  options.micro_batch_sequences = 2;
  const PackingComparison result = compare_batching({10, 2, 2, 2}, data, options);
  EXPECT_EQ(result.global_batches, 1);
  EXPECT_EQ(result.real_tokens, 16);
  EXPECT_EQ(result.chunks, 4);  // 4 + 4 + (2 + 2) + (2)
  EXPECT_EQ(result.chunk_lower_bound, 4);
  EXPECT_EQ(result.split_sequences, 1);
  EXPECT_EQ(result.dependent_chunks, 3);
  EXPECT_EQ(result.standalone_chunks, 1);
  EXPECT_DOUBLE_EQ(result.chunkflow.fill_ratio(), 1.0);
  // Pad-to-longest: micro-batches {10, 2} and {2, 2} -> 20 + 4 slots.
  EXPECT_EQ(result.pad_to_longest.capacity_tokens, 24);
  // Pack-to-max-length (rows of 10): {10} and {2, 2, 2} -> 2 rows of 10.
  EXPECT_EQ(result.pack_to_max_length.units, 2);
  EXPECT_EQ(result.pack_to_max_length.capacity_tokens, 20);
  EXPECT_NE(result.to_text().find("pad-to-longest"), std::string::npos);
}

TEST(DatasetStatsTest, RejectsAMaxContextShorterThanTheLongestSequence) {
  configs::DataConfig data;
  ComparisonOptions options;
  options.max_context = 5;
  EXPECT_THROW(compare_batching({10, 2}, data, options), core::Error);
}

}  // namespace
}  // namespace chunkflow::data
