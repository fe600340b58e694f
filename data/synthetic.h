// The bundled demo dataset: sequence lengths with the long tail of chat fine-tuning data
// (LMSys-Chat-1M: over 99 % below 4K tokens, a few hundred times longer), or drawn from a published
// length histogram file, and token content with a long-range dependency that only attention across
// chunks can learn.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/random.h"

namespace chunkflow::data {

// A sequence-length histogram read from a text file (data/distributions/*.txt):
//
//   # comments run from '#' to the end of the line; cite the source here
//   within log-uniform          # optional, once: how lengths spread inside a bin
//                               #   (uniform, the default, or log-uniform)
//   bin 1 4096 0.99             # lengths in [low, high) tokens, share of sequences
//   bin 4096 300001 0.01
//
// Bins are integers 1 <= low < high, ascending and non-overlapping (gaps are allowed); fractions
// lie in [0, 1] and sum to 1 within kFractionTolerance (they are then normalised).
struct LengthBin {
  int64_t low = 0;    // shortest length in the bin (tokens)
  int64_t high = 0;   // one past the longest
  double fraction = 0;
};

enum class WithinBin { kUniform, kLogUniform };

struct LengthHistogram {
  std::vector<LengthBin> bins;  // empty: no histogram (the built-in log-normal shape is used)
  WithinBin within = WithinBin::kUniform;
  std::string source;           // file name, for messages
};

inline constexpr double kFractionTolerance = 1e-3;

// Parses histogram text; `source` names it in errors, which read "source:line: rule, got value".
LengthHistogram parse_length_histogram(const std::string& text, const std::string& source);
// Reads and parses a histogram file (a missing file is an error naming it).
LengthHistogram read_length_histogram(const std::string& path);

// `count` lengths drawn from `histogram` (needs bins): a bin by its fraction, then a length in it
// (uniform or log-uniform, per histogram.within), times `scale`, rounded, at least 1.
// Deterministic in `seed`. chunkflow-data synth and chunkflow-plan draw their lengths here.
std::vector<int64_t> sample_lengths(const LengthHistogram& histogram, int64_t count, uint64_t seed, double scale = 1.0);

struct SynthOptions {
  int64_t sequences = 20000;
  int64_t vocab_size = 512;   // ids [0, vocab_size); 0 = BOS and 1 = COPY are reserved
  // Multiplies every length, so the same shape trains in minutes on 2 cores (scale < 1) or
  // matches real chat data (scale 1: body median ~200 tokens, tail from 4K).
  double scale = 1.0;
  int64_t max_length = 131072;   // the tail's upper end (tokens)
  double tail_fraction = 0.005;  // share of sequences drawn from the tail
  uint64_t seed = 1;
  // 0: each sequence repeats the first half of itself (see synthesize_sequence). N > 0: sequences
  // longer than 2N + 2 tokens hold a span of N tokens that repeats with period N to the end, so
  // every repeated token's source lies exactly N positions back (in an earlier chunk when
  // N > chunk_size); shorter ones keep the half layout.
  int64_t copy_period = 0;
  // When it has bins, lengths come from it (times `scale`) and max_length / tail_fraction are
  // unused.
  LengthHistogram length_histogram;

  // Throws core::Error naming the option ("--sequences", ...) for values out of range.
  void validate() const;
};

inline constexpr int32_t kBosToken = 0;
inline constexpr int32_t kCopyToken = 1;

// Lengths: with probability 1 - tail_fraction a log-normal body (median 200 x scale, sigma 1.1,
// kept within [2, 4096 x scale]); otherwise log-uniform in [4096 x scale, max_length].
// With a length histogram instead: a bin with probability equal to its fraction, a length inside
// it (uniform or log-uniform over [low, high)), times `scale`, rounded, at least 1.
// Deterministic in options.seed.
std::vector<int64_t> sample_longtail_lengths(const SynthOptions& options);

// One sequence of `length` tokens: BOS, a random span A, COPY, then A again from its start for as
// many tokens as remain. Predicting the repeated part needs the token `|A| + 1` positions back,
// which for long sequences lies in an earlier chunk. A is drawn uniformly from [2, vocab_size)
// without replacement when it fits (|A| <= vocab_size - 2), so each repeated token has exactly
// one earlier occurrence; longer spans are drawn with replacement.
// With copy_period N > 0 and length > 2N + 2 instead: BOS, a span A of N tokens (drawn the same
// way), then A again and again to the end, without COPY tokens.
void synthesize_sequence(int64_t length, int64_t vocab_size, core::Rng& rng, std::vector<int32_t>& out,
                         int64_t copy_period = 0);

// First position of the repeated part, or `length` when the sequence is too short to have one.
int64_t copy_start(int64_t length, int64_t copy_period = 0);

struct SynthSummary {
  int64_t sequences = 0;
  int64_t tokens = 0;
  int64_t max_length = 0;
  std::string prefix;
};

// Writes prefix.bin/.idx (dtype chosen for the vocabulary) atomically, with progress.
SynthSummary write_synthetic_dataset(const std::string& prefix, const SynthOptions& options,
                                     bool show_progress = true);

}  // namespace chunkflow::data
