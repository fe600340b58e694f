// Synthetic long-tail data; see synthetic.h.
#include "data/synthetic.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <unordered_set>

#include "core/error.h"
#include "core/file_io.h"
#include "core/progress.h"
#include "data/indexed_dataset.h"

namespace chunkflow::data {
namespace {
constexpr double kBodyMedian = 200.0;
constexpr double kBodySigma = 1.1;
constexpr double kTailStart = 4096.0;
}  // namespace

void SynthOptions::validate() const {
  CF_CHECK(sequences > 0, "--sequences must be > 0, got ", sequences);
  CF_CHECK(vocab_size >= 3, "--vocab-size must be >= 3 (ids 0 and 1 are reserved), got ", vocab_size);
  CF_CHECK(vocab_size <= (int64_t{1} << 31) - 1, "--vocab-size must fit int32, got ", vocab_size);
  CF_CHECK(scale > 0 && std::isfinite(scale), "--scale must be > 0, got ", scale);
  CF_CHECK(tail_fraction >= 0 && tail_fraction <= 1, "--tail-fraction must be in [0, 1], got ",
           tail_fraction);
  CF_CHECK(max_length >= static_cast<int64_t>(std::ceil(kTailStart * scale)),
           "--max-length (", max_length, ") must be >= the tail's start 4096 x scale = ",
           static_cast<int64_t>(std::ceil(kTailStart * scale)), "; lower --scale or raise --max-length");
  CF_CHECK(max_length < (int64_t{1} << 31), "--max-length must be below 2^31, got ", max_length);
}

std::vector<int64_t> sample_longtail_lengths(const SynthOptions& options) {
  options.validate();
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

int64_t copy_start(int64_t length) {
  // Layout: BOS, A (span_length tokens), COPY, then length - span_length - 2 repeated tokens.
  if (length < 4) return length;
  const int64_t span_length = (length - 1) / 2;
  return span_length + 2;
}

void synthesize_sequence(int64_t length, int64_t vocab_size, core::Rng& rng, std::vector<int32_t>& out) {
  out.resize(static_cast<size_t>(length));
  if (length == 0) return;
  out[0] = kBosToken;
  const auto content = static_cast<uint64_t>(vocab_size - 2);
  const int64_t repeat_from = copy_start(length);
  const int64_t span_end = repeat_from < length ? repeat_from - 1 : length;  // A occupies [1, span_end)
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
    synthesize_sequence(length, options.vocab_size, rng, tokens);
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
