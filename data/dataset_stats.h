// Dataset statistics for `chunkflow-data stats`: the length distribution (text and SVG) and how
// well ChunkFlow's chunks fill the machine compared with pad-to-longest and pack-to-max-length
// batching of the same global batches.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "configs/data_config.h"

namespace chunkflow::data {

struct LengthSummary {
  int64_t sequences = 0;
  int64_t tokens = 0;
  int64_t min = 0, max = 0;
  double mean = 0;
  int64_t p50 = 0, p90 = 0, p99 = 0, p999 = 0;
  double share_below_4k = 0;  // fraction of sequences with length < 4096
};
LengthSummary summarize_lengths(const std::vector<int32_t>& lengths);

// Power-of-two bins: [0, 1), [1, 2), [2, 4), [4, 8), ...
struct HistogramBin {
  int64_t lower = 0;  // inclusive
  int64_t upper = 0;  // exclusive
  int64_t sequences = 0;
  int64_t tokens = 0;
};
std::vector<HistogramBin> length_histogram(const std::vector<int32_t>& lengths);

// A table with a log-scaled bar per bin, share of sequences and of tokens, and cumulative share.
std::string histogram_text(const std::vector<HistogramBin>& bins);
// A standalone SVG bar chart (log-scaled counts; tokens share as a second series).
std::string histogram_svg(const std::vector<HistogramBin>& bins, const std::string& title);

// One batching strategy over an epoch of global batches.
struct BatchingFigures {
  std::string name;
  int64_t units = 0;            // chunks, micro-batches or packed rows
  int64_t capacity_tokens = 0;  // slots paid for, padding included
  int64_t real_tokens = 0;
  int64_t unit_tokens = 0;      // size of one unit (tokens) when uniform, else 0
  double fill_ratio() const;    // real tokens / capacity
};

struct PackingComparison {
  int64_t global_batches = 0;
  int64_t real_tokens = 0;
  int64_t chunk_size = 0;
  int64_t chunks = 0, standalone_chunks = 0, dependent_chunks = 0, split_sequences = 0;
  int64_t chunk_lower_bound = 0;  // sum over batches of ceil(tokens / chunk_size)
  BatchingFigures chunkflow, pad_to_longest, pack_to_max_length;
  std::string to_text() const;
};

struct ComparisonOptions {
  int64_t chunk_size = 4096;
  int64_t micro_batch_sequences = 8;  // pad-to-longest micro-batch size
  int64_t max_context = 0;            // pack-to-max-length row size; 0 = longest sequence
  uint64_t seed = 1234;
};

// Runs one epoch of the global batch sampler (data.batch_* and data.shuffle) and plans each batch
// three ways: ChunkFlow chunks, pad-to-longest micro-batches, pack-to-max-length rows.
PackingComparison compare_batching(const std::vector<int32_t>& lengths, const configs::DataConfig& data,
                                   const ComparisonOptions& options);

}  // namespace chunkflow::data
