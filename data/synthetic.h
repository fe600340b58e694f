// The bundled demo dataset: sequence lengths with the long tail of chat fine-tuning data
// (LMSys-Chat-1M: over 99 % below 4K tokens, a few hundred times longer) and token content with a
// long-range dependency that only attention across chunks can learn.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/random.h"

namespace chunkflow::data {

struct SynthOptions {
  int64_t sequences = 20000;
  int64_t vocab_size = 512;   // ids [0, vocab_size); 0 = BOS and 1 = COPY are reserved
  // Multiplies every length, so the same shape trains in minutes on 2 cores (scale < 1) or
  // matches real chat data (scale 1: body median ~200 tokens, tail from 4K).
  double scale = 1.0;
  int64_t max_length = 131072;   // the tail's upper end (tokens)
  double tail_fraction = 0.005;  // share of sequences drawn from the tail
  uint64_t seed = 1;

  // Throws core::Error naming the option ("--sequences", ...) for values out of range.
  void validate() const;
};

inline constexpr int32_t kBosToken = 0;
inline constexpr int32_t kCopyToken = 1;

// Lengths: with probability 1 - tail_fraction a log-normal body (median 200 x scale, sigma 1.1,
// kept within [2, 4096 x scale]); otherwise log-uniform in [4096 x scale, max_length].
// Deterministic in options.seed.
std::vector<int64_t> sample_longtail_lengths(const SynthOptions& options);

// One sequence of `length` tokens: BOS, a random span A, COPY, then A again from its start for as
// many tokens as remain. Predicting the repeated part needs the token `|A| + 1` positions back,
// which for long sequences lies in an earlier chunk. A is drawn uniformly from [2, vocab_size)
// without replacement when it fits (|A| <= vocab_size - 2), so each repeated token has exactly
// one earlier occurrence; longer spans are drawn with replacement.
void synthesize_sequence(int64_t length, int64_t vocab_size, core::Rng& rng, std::vector<int32_t>& out);

// First position of the repeated part, or `length` when the sequence is too short to have one.
int64_t copy_start(int64_t length);

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
