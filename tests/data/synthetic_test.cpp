// Synthetic long-tail data: the length shape, the copy structure and the written dataset.
#include "data/synthetic.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "core/error.h"
#include "core/file_io.h"
#include "data/dataset_stats.h"
#include "data/indexed_dataset.h"
#include "tests/support/expect_error.h"
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

TEST(SyntheticTest, CopyPeriodRepeatsASpanInLongSequencesOnly) {
  core::Rng rng(11);
  std::vector<int32_t> tokens;
  const int64_t period = 80;
  // 162 = 2 x 80 + 2 keeps the half layout; 163 and longer repeat an 80-token span to the end.
  for (const int64_t length : {5, 100, 162, 163, 500, 1024}) {
    synthesize_sequence(length, 512, rng, tokens, period);
    ASSERT_EQ(static_cast<int64_t>(tokens.size()), length);
    EXPECT_EQ(tokens[0], kBosToken);
    const int64_t start = copy_start(length, period);
    if (length <= 2 * period + 2) {
      EXPECT_EQ(start, copy_start(length)) << "length " << length;
      continue;
    }
    EXPECT_EQ(start, period + 1);
    // Every repeated token equals the one `period` back; no COPY token anywhere.
    for (int64_t i = start; i < length; ++i) {
      ASSERT_EQ(tokens[static_cast<size_t>(i)], tokens[static_cast<size_t>(i - period)]) << "length " << length;
    }
    EXPECT_EQ(std::count(tokens.begin(), tokens.end(), kCopyToken), 0);
    // The span is 80 distinct content ids, so each copy has exactly one source.
    const std::set<int32_t> span(tokens.begin() + 1, tokens.begin() + start);
    EXPECT_EQ(static_cast<int64_t>(span.size()), period);
    EXPECT_EQ(span.count(kBosToken), 0u);
  }
  SynthOptions options;
  options.copy_period = -1;
  EXPECT_THROW(options.validate(), core::Error);
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

// Counts of `lengths` per bin; lengths outside every bin land in the extra last slot.
std::vector<int64_t> bin_counts(const LengthHistogram& histogram, const std::vector<int64_t>& lengths) {
  std::vector<int64_t> counts(histogram.bins.size() + 1, 0);
  for (const int64_t length : lengths) {
    size_t index = 0;
    while (index < histogram.bins.size() &&
           !(length >= histogram.bins[index].low && length < histogram.bins[index].high)) {
      ++index;
    }
    ++counts[index];
  }
  return counts;
}

// Pearson's chi-square of the counts against the histogram's fractions (bins with a share only).
double chi_square(const LengthHistogram& histogram, const std::vector<int64_t>& counts, int64_t draws) {
  double statistic = 0;
  for (size_t b = 0; b < histogram.bins.size(); ++b) {
    if (histogram.bins[b].fraction == 0) continue;
    const double expected = static_cast<double>(draws) * histogram.bins[b].fraction;
    const double gap = static_cast<double>(counts[b]) - expected;
    statistic += gap * gap / expected;
  }
  return statistic;
}

TEST(SyntheticHistogramTest, DrawnLengthsFollowTheBinFractions) {
  const LengthHistogram histogram = parse_length_histogram(
      "# four bins, one of them empty\n"
      "bin 1 100 0.5\n"
      "bin 100 1000 0.3   # trailing comment\n"
      "bin 1000 2000 0\n"
      "bin 4000 8000 0.2\n",
      "four.txt");
  ASSERT_EQ(histogram.bins.size(), 4u);
  EXPECT_EQ(histogram.within, WithinBin::kUniform) << "uniform is the default";
  SynthOptions options;
  options.sequences = 100000;
  options.seed = 7;
  options.length_histogram = histogram;
  const auto lengths = sample_longtail_lengths(options);
  const std::vector<int64_t> counts = bin_counts(histogram, lengths);
  EXPECT_EQ(counts[2], 0) << "a bin with fraction 0 is never drawn";
  EXPECT_EQ(counts[4], 0) << "no length outside the bins (the gap [2000, 4000) included)";
  // 3 degrees of freedom: P(chi-square > 16.27) = 0.001.
  EXPECT_LT(chi_square(histogram, counts, options.sequences), 16.27)
      << counts[0] << " " << counts[1] << " " << counts[3];
  // Uniform inside a bin: the mean of bin [4000, 8000) is near its middle 5999.5 (sd of the mean
  // of ~20000 draws is ~8).
  double sum = 0;
  for (const int64_t length : lengths) {
    if (length >= 4000) sum += static_cast<double>(length);
  }
  EXPECT_NEAR(sum / static_cast<double>(counts[3]), 5999.5, 50.0);
  EXPECT_EQ(lengths, sample_longtail_lengths(options)) << "deterministic in the seed";
  options.seed = 8;
  EXPECT_NE(lengths, sample_longtail_lengths(options));
}

TEST(SyntheticHistogramTest, LogUniformSpreadsEvenlyOverOrdersOfMagnitude) {
  const LengthHistogram histogram = parse_length_histogram("within log-uniform\nbin 10 100000 1\n", "log.txt");
  EXPECT_EQ(histogram.within, WithinBin::kLogUniform);
  SynthOptions options;
  options.sequences = 40000;
  options.length_histogram = histogram;
  const auto lengths = sample_longtail_lengths(options);
  // Four decades, a quarter of the draws in each: [10, 100), [100, 1000), [1000, 10^4), [10^4, 10^5).
  const LengthHistogram decades = parse_length_histogram(
      "bin 10 100 0.25\nbin 100 1000 0.25\nbin 1000 10000 0.25\nbin 10000 100000 0.25\n", "decades.txt");
  const std::vector<int64_t> counts = bin_counts(decades, lengths);
  EXPECT_EQ(counts[4], 0);
  EXPECT_LT(chi_square(decades, counts, options.sequences), 16.27)
      << counts[0] << " " << counts[1] << " " << counts[2] << " " << counts[3];
}

TEST(SyntheticHistogramTest, ScaleShrinksHistogramLengths) {
  SynthOptions options;
  options.sequences = 20000;
  options.length_histogram = parse_length_histogram("bin 1000 2000 1\n", "one.txt");
  options.scale = 0.25;
  const auto lengths = sample_longtail_lengths(options);
  EXPECT_GE(*std::min_element(lengths.begin(), lengths.end()), 250);
  EXPECT_LE(*std::max_element(lengths.begin(), lengths.end()), 500);
  options.scale = 1e-6;
  const auto tiny = sample_longtail_lengths(options);
  EXPECT_EQ(*std::min_element(tiny.begin(), tiny.end()), 1) << "never below one token";
}

TEST(SyntheticHistogramTest, BundledLmsysFileHasThePapersStatedShape) {
  const LengthHistogram histogram = read_length_histogram(testing::source_file("data/distributions/lmsys_chat_1m.txt"));
  SynthOptions options;
  options.sequences = 200000;
  options.length_histogram = histogram;
  const auto lengths = sample_longtail_lengths(options);
  std::vector<int32_t> as_int32(lengths.begin(), lengths.end());
  const LengthSummary summary = summarize_lengths(as_int32);
  // The paper: over 99 % below 4K tokens (the file takes 99 % exactly), longest about 300K.
  EXPECT_NEAR(summary.share_below_4k, 0.99, 0.002);
  EXPECT_LT(summary.max, 300000);
  EXPECT_GT(summary.max, 200000) << "2000 log-uniform tail draws reach near the top";
}

TEST(SyntheticHistogramTest, WritesADatasetWithHistogramLengths) {
  testing::TempDir dir;
  SynthOptions options;
  options.sequences = 200;
  options.length_histogram = parse_length_histogram("bin 5 50 0.5\nbin 50 300 0.5\n", "small.txt");
  const SynthSummary summary = write_synthetic_dataset(dir.file("hist"), options, false);
  const IndexedDataset dataset(dir.file("hist"));
  const auto lengths = sample_longtail_lengths(options);
  ASSERT_EQ(dataset.size(), 200);
  for (int64_t s = 0; s < dataset.size(); ++s) ASSERT_EQ(dataset.length(s), lengths[static_cast<size_t>(s)]);
  EXPECT_LT(summary.max_length, 300);
}

TEST(SyntheticHistogramTest, MalformedHistogramsNameFileAndLine) {
  using testing::expect_error_mentions;
  const auto parse = [](const std::string& text) { return [text] { parse_length_histogram(text, "h.txt"); }; };
  expect_error_mentions(parse("# header\nbin 1 10 0.5\nbin 10 20 0.4\n"), {"h.txt:", "sum to 0.9", "not 1"});
  expect_error_mentions(parse("bin 1 10 0.5\n\nbim 10 20 0.5\n"), {"h.txt:3", "unknown keyword 'bim'", "did you mean 'bin'"});
  expect_error_mentions(parse("bin 10 10 1\n"), {"h.txt:1", "low must be < high", "low 10", "high 10"});
  expect_error_mentions(parse("bin 1 10 0.5\nbin 20 5 0.5\n"), {"h.txt:2", "low must be < high"});
  expect_error_mentions(parse("bin -5 10 1\n"), {"h.txt:1", "low must be >= 1", "-5"});
  expect_error_mentions(parse("bin 1 10 1.5\n"), {"h.txt:1", "fraction must be in [0, 1]", "1.5"});
  expect_error_mentions(parse("bin 1 10 -0.5\nbin 10 20 1.5\n"), {"h.txt:1", "fraction", "-0.5"});
  expect_error_mentions(parse("bin 1 10 abc\n"), {"h.txt:1", "fraction", "'abc'"});
  expect_error_mentions(parse("bin 1 10\n"), {"h.txt:1", "bin LOW HIGH FRACTION", "got 2 values"});
  expect_error_mentions(parse("bin 1 100 0.5\nbin 50 200 0.5\n"), {"h.txt:2", "not overlap", "previous bin's high 100"});
  expect_error_mentions(parse("within loguniform\nbin 1 2 1\n"), {"h.txt:1", "'loguniform'", "did you mean 'log-uniform'"});
  expect_error_mentions(parse("within uniform\nwithin uniform\nbin 1 2 1\n"), {"h.txt:2", "twice", "line 1"});
  expect_error_mentions(parse("# nothing\n"), {"h.txt", "no 'bin"});
  expect_error_mentions([] { read_length_histogram("/nonexistent/h.txt"); }, {"/nonexistent/h.txt"});
}

TEST(SyntheticHistogramTest, FileErrorsCarryThePath) {
  testing::TempDir dir;
  core::write_file_atomic(dir.file("bad.txt"), "within uniform\nbin 1 100 0.7\nbin 100 90 0.3\n");
  testing::expect_error_mentions([&] { read_length_histogram(dir.file("bad.txt")); },
                                 {dir.file("bad.txt") + ":3", "low must be < high"});
}

}  // namespace
}  // namespace chunkflow::data
