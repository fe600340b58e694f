// The global batch sampler: which sequences make up each optimizer step's global batch.
// Deterministic from (seed, epoch, position in the epoch), resumable from a saved position, and
// identical on every rank, so every rank can build the same chunk plan without communicating.
#pragma once

#include <cstdint>
#include <vector>

#include "configs/data_config.h"

namespace chunkflow::data {

// Where the sampler stands; saved in checkpoints. `cursor` indexes the epoch's sequence order.
struct SamplerPosition {
  int64_t epoch = 0;
  int64_t cursor = 0;
  int64_t step = 0;  // global batches handed out so far, over all epochs
  bool operator==(const SamplerPosition&) const = default;
};

struct GlobalBatch {
  int64_t step = 0;
  int64_t epoch = 0;
  std::vector<int64_t> sequences;  // dataset indices, in sampler order
  int64_t tokens = 0;
};

class GlobalBatchSampler {
 public:
  // `lengths`: per dataset sequence (IndexedDataset::lengths()). Uses data.batch_sequences or
  // data.batch_tokens (exactly one is > 0) and data.shuffle. Throws Error for an empty dataset.
  GlobalBatchSampler(const std::vector<int32_t>& lengths, const configs::DataConfig& config,
                     uint64_t seed);

  // The next global batch. By sequences: that many, fewer only at the end of an epoch. By tokens:
  // sequences are added while the total stays within data.batch_tokens; a sequence longer than
  // the budget forms a batch of its own (it is never dropped or cut). An epoch's last batch may
  // be smaller; the following call starts the next epoch.
  GlobalBatch next();

  const SamplerPosition& position() const { return position_; }
  // Continues exactly where a sampler with the same dataset, config and seed stood.
  void restore(const SamplerPosition& position);

  // The order in which `epoch` visits the dataset: a seeded shuffle, or 0..n-1 without shuffle.
  std::vector<int64_t> epoch_order(int64_t epoch) const;
  int64_t dataset_size() const { return static_cast<int64_t>(lengths_.size()); }

 private:
  void load_epoch(int64_t epoch);

  std::vector<int32_t> lengths_;
  configs::DataConfig config_;
  uint64_t seed_;
  SamplerPosition position_;
  int64_t loaded_epoch_ = -1;
  std::vector<int64_t> order_;
};

}  // namespace chunkflow::data
