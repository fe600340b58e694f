// Synthetic long-tail data; see synthetic.h.
#include "data/synthetic.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <sstream>
#include <unordered_set>

#include "core/error.h"
#include "core/file_io.h"
#include "core/progress.h"
#include "core/strings.h"
#include "data/indexed_dataset.h"

namespace chunkflow::data {
namespace {
constexpr double kBodyMedian = 200.0;
constexpr double kBodySigma = 1.1;
constexpr double kTailStart = 4096.0;
constexpr int64_t kLengthLimit = int64_t{1} << 31;

std::vector<std::string> split_words(const std::string& line) {
  std::istringstream stream(line.substr(0, line.find('#')));
  std::vector<std::string> words;
  for (std::string word; stream >> word;) words.push_back(word);
  return words;
}

double histogram_fraction_sum(const LengthHistogram& histogram) {
  double sum = 0;
  for (const LengthBin& bin : histogram.bins) sum += bin.fraction;
  return sum;
}

void check_fraction_sum(const LengthHistogram& histogram) {
  const double sum = histogram_fraction_sum(histogram);
  CF_CHECK(std::fabs(sum - 1.0) <= kFractionTolerance, histogram.source, ": bin fractions sum to ",
           core::format_fixed(sum, 6), ", not 1 (tolerance ", kFractionTolerance,
           "); fix a bin or give the fractions with more digits");
}

}  // namespace

std::vector<int64_t> sample_lengths(const LengthHistogram& histogram, int64_t count, uint64_t seed, double scale) {
  CF_CHECK(!histogram.bins.empty(), "sample_lengths needs a histogram with bins");
  CF_CHECK(count >= 0, "sample_lengths: count must be >= 0, got ", count);
  const double total = histogram_fraction_sum(histogram);
  std::vector<double> cumulative;
  double running = 0;
  for (const LengthBin& bin : histogram.bins) cumulative.push_back(running += bin.fraction / total);
  core::Rng rng(seed);
  std::vector<int64_t> lengths(static_cast<size_t>(count));
  for (auto& length : lengths) {
    const double pick = rng.uniform();
    // The first bin whose cumulative share exceeds the pick (empty bins never do). Rounding can
    // leave the last cumulative value a hair below 1: then step back to the last non-empty bin.
    size_t index = 0;
    while (index + 1 < cumulative.size() && pick >= cumulative[index]) ++index;
    while (histogram.bins[index].fraction == 0) --index;
    const LengthBin& bin = histogram.bins[index];
    int64_t in_bin;
    if (histogram.within == WithinBin::kUniform) {
      in_bin = bin.low + static_cast<int64_t>(rng.below(static_cast<uint64_t>(bin.high - bin.low)));
    } else {
      const double low = std::log(static_cast<double>(bin.low));
      const double high = std::log(static_cast<double>(bin.high));
      in_bin = static_cast<int64_t>(std::floor(std::exp(low + (high - low) * rng.uniform())));
      in_bin = std::clamp(in_bin, bin.low, bin.high - 1);
    }
    length = std::max<int64_t>(1, std::llround(static_cast<double>(in_bin) * scale));
  }
  return lengths;
}

namespace {

std::vector<int64_t> sample_histogram_lengths(const SynthOptions& options) {
  return sample_lengths(options.length_histogram, options.sequences, core::mix64(options.seed ^ 0x4157), options.scale);
}

}  // namespace

LengthHistogram parse_length_histogram(const std::string& text, const std::string& source) {
  LengthHistogram histogram;
  histogram.source = source;
  std::istringstream lines(text);
  int within_line = 0;
  int line_number = 0;
  for (std::string line; std::getline(lines, line);) {
    ++line_number;
    const std::string where = source + ":" + std::to_string(line_number);
    const std::vector<std::string> words = split_words(line);
    if (words.empty()) continue;
    if (words[0] == "within") {
      CF_CHECK(words.size() == 2, where, ": 'within' takes one word (uniform or log-uniform), got ",
               words.size() - 1);
      CF_CHECK(within_line == 0, where, ": 'within' given twice (first at line ", within_line, ")");
      CF_CHECK(words[1] == "uniform" || words[1] == "log-uniform", where,
               ": within must be uniform or log-uniform, got '", words[1], "'",
               core::did_you_mean(words[1], {"uniform", "log-uniform"}));
      histogram.within = words[1] == "uniform" ? WithinBin::kUniform : WithinBin::kLogUniform;
      within_line = line_number;
      continue;
    }
    CF_CHECK(words[0] == "bin", where, ": unknown keyword '", words[0], "'",
             core::did_you_mean(words[0], {"bin", "within"}), " (lines are 'bin LOW HIGH FRACTION', ",
             "'within uniform|log-uniform' or '# comment')");
    CF_CHECK(words.size() == 4, where, ": a bin is 'bin LOW HIGH FRACTION', got ", words.size() - 1,
             " values");
    LengthBin bin;
    bin.low = core::parse_int64(words[1], where + ": bin low");
    bin.high = core::parse_int64(words[2], where + ": bin high");
    bin.fraction = core::parse_double(words[3], where + ": bin fraction");
    CF_CHECK(bin.low >= 1, where, ": bin low must be >= 1 token, got ", bin.low);
    CF_CHECK(bin.low < bin.high, where, ": bin low must be < high (bins are [low, high)), got low ", bin.low,
             " and high ", bin.high);
    CF_CHECK(bin.high <= kLengthLimit, where, ": bin high must be <= 2^31, got ", bin.high);
    CF_CHECK(bin.fraction >= 0 && bin.fraction <= 1, where, ": bin fraction must be in [0, 1], got ",
             words[3]);
    if (!histogram.bins.empty()) {
      const LengthBin& previous = histogram.bins.back();
      CF_CHECK(bin.low >= previous.high, where, ": bins must be ascending and not overlap; [", bin.low, ", ",
               bin.high, ") starts below the previous bin's high ", previous.high);
    }
    histogram.bins.push_back(bin);
  }
  CF_CHECK(!histogram.bins.empty(), source, ": no 'bin LOW HIGH FRACTION' lines");
  check_fraction_sum(histogram);
  return histogram;
}

LengthHistogram read_length_histogram(const std::string& path) {
  CF_CHECK(core::path_exists(path), "--length-histogram: no file at ", path);
  return parse_length_histogram(core::read_file(path), path);
}

void SynthOptions::validate() const {
  CF_CHECK(sequences > 0, "--sequences must be > 0, got ", sequences);
  CF_CHECK(vocab_size >= 3, "--vocab-size must be >= 3 (ids 0 and 1 are reserved), got ", vocab_size);
  CF_CHECK(vocab_size <= (int64_t{1} << 31) - 1, "--vocab-size must fit int32, got ", vocab_size);
  CF_CHECK(scale > 0 && std::isfinite(scale), "--scale must be > 0, got ", scale);
  CF_CHECK(copy_period >= 0, "--copy-period must be >= 0 (0: the half-span layout), got ", copy_period);
  CF_CHECK(tail_fraction >= 0 && tail_fraction <= 1, "--tail-fraction must be in [0, 1], got ",
           tail_fraction);
  if (!length_histogram.bins.empty()) {
    int64_t previous_high = 0;
    for (const LengthBin& bin : length_histogram.bins) {
      CF_CHECK(bin.low >= 1 && bin.low < bin.high && bin.low >= previous_high && bin.fraction >= 0,
               length_histogram.source, ": bin [", bin.low, ", ", bin.high, ") fraction ", bin.fraction,
               " breaks the rules (1 <= low < high, ascending, fraction >= 0)");
      previous_high = bin.high;
    }
    check_fraction_sum(length_histogram);
    CF_CHECK(static_cast<double>(previous_high) * scale < static_cast<double>(kLengthLimit),
             "--scale ", scale, " makes the histogram's longest length ", previous_high,
             " reach 2^31 tokens; lower --scale");
    return;
  }
  CF_CHECK(max_length >= static_cast<int64_t>(std::ceil(kTailStart * scale)),
           "--max-length (", max_length, ") must be >= the tail's start 4096 x scale = ",
           static_cast<int64_t>(std::ceil(kTailStart * scale)), "; lower --scale or raise --max-length");
  CF_CHECK(max_length < kLengthLimit, "--max-length must be below 2^31, got ", max_length);
}

std::vector<int64_t> sample_longtail_lengths(const SynthOptions& options) {
  options.validate();
  if (!options.length_histogram.bins.empty()) return sample_histogram_lengths(options);
  core::Rng rng(core::mix64(options.seed ^ 0x1e4975));
  const double body_cap = kTailStart * options.scale;
  const double tail_low = std::log(body_cap);
  const double tail_high = std::log(static_cast<double>(options.max_length));
  std::vector<int64_t> lengths(static_cast<size_t>(options.sequences));
  for (auto& length : lengths) {
    double value;
    if (rng.uniform() < options.tail_fraction) {
      value = std::exp(tail_low + (tail_high - tail_low) * rng.uniform());
    } else {
      value = std::exp(std::log(kBodyMedian * options.scale) + kBodySigma * rng.normal());
      value = std::min(value, body_cap);
    }
    length = std::clamp<int64_t>(static_cast<int64_t>(std::llround(value)), 2, options.max_length);
  }
  return lengths;
}

int64_t copy_start(int64_t length, int64_t copy_period) {
  if (copy_period > 0 && length > 2 * copy_period + 2) return copy_period + 1;
  // Layout: BOS, A (span_length tokens), COPY, then length - span_length - 2 repeated tokens.
  if (length < 4) return length;
  const int64_t span_length = (length - 1) / 2;
  return span_length + 2;
}

void synthesize_sequence(int64_t length, int64_t vocab_size, core::Rng& rng, std::vector<int32_t>& out,
                         int64_t copy_period) {
  out.resize(static_cast<size_t>(length));
  if (length == 0) return;
  out[0] = kBosToken;
  const auto content = static_cast<uint64_t>(vocab_size - 2);
  const int64_t repeat_from = copy_start(length, copy_period);
  // A occupies [1, span_end); the half-span layout puts a COPY token at span_end.
  const bool periodic = copy_period > 0 && length > 2 * copy_period + 2;
  const int64_t span_end = repeat_from >= length ? length : periodic ? repeat_from : repeat_from - 1;
  const auto span_length = static_cast<uint64_t>(span_end - 1);
  if (span_length <= content && span_length * 4 <= content) {
    // Distinct tokens drawn without replacement: every token of the repeat occurs exactly once
    // before it, so the copy is unambiguous for an induction head. Sparse draws use rejection.
    std::unordered_set<int32_t> used;
    for (uint64_t i = 0; i < span_length; ++i) {
      int32_t token;
      do token = static_cast<int32_t>(2 + rng.below(content));
      while (!used.insert(token).second);
      out[static_cast<size_t>(1 + i)] = token;
    }
  } else if (span_length <= content) {
    // Dense draws: a partial Fisher-Yates shuffle of the whole content range.
    std::vector<int32_t> pool(static_cast<size_t>(content));
    for (uint64_t i = 0; i < content; ++i) pool[i] = static_cast<int32_t>(2 + i);
    for (uint64_t i = 0; i < span_length; ++i) {
      std::swap(pool[i], pool[i + rng.below(content - i)]);
      out[static_cast<size_t>(1 + i)] = pool[i];
    }
  } else {
    for (int64_t i = 1; i < span_end; ++i) out[static_cast<size_t>(i)] = static_cast<int32_t>(2 + rng.below(content));
  }
  if (repeat_from >= length) return;
  if (periodic) {
    for (int64_t i = repeat_from; i < length; ++i) out[static_cast<size_t>(i)] = out[static_cast<size_t>(i - copy_period)];
    return;
  }
  out[static_cast<size_t>(span_end)] = kCopyToken;
  for (int64_t i = repeat_from; i < length; ++i) {
    out[static_cast<size_t>(i)] = out[static_cast<size_t>(1 + i - repeat_from)];
  }
}

SynthSummary write_synthetic_dataset(const std::string& prefix, const SynthOptions& options,
                                     bool show_progress) {
  const std::vector<int64_t> lengths = sample_longtail_lengths(options);
  const auto parent = std::filesystem::path(prefix).parent_path();
  if (!parent.empty()) core::make_directories(parent.string());
  IndexedDatasetWriter writer(prefix, dtype_for_vocab(options.vocab_size));
  core::Rng rng(core::mix64(options.seed ^ 0xc0ffee));
  std::vector<int32_t> tokens;
  SynthSummary summary;
  summary.prefix = prefix;
  int64_t total_tokens = 0;
  for (const int64_t length : lengths) total_tokens += length;
  core::Progress progress("synth " + prefix, show_progress ? total_tokens : 0, "tokens");
  for (const int64_t length : lengths) {
    synthesize_sequence(length, options.vocab_size, rng, tokens, options.copy_period);
    writer.add_sequence(tokens);
    writer.end_document();
    summary.tokens += length;
    summary.max_length = std::max(summary.max_length, length);
    if (show_progress) progress.update(summary.tokens);
  }
  writer.finish();
  if (show_progress) progress.finish();
  summary.sequences = static_cast<int64_t>(lengths.size());
  return summary;
}

}  // namespace chunkflow::data
