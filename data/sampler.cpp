// Global batch sampling; see sampler.h.
#include "data/sampler.h"

#include <numeric>

#include "core/error.h"
#include "core/random.h"

namespace chunkflow::data {

GlobalBatchSampler::GlobalBatchSampler(const std::vector<int32_t>& lengths,
                                       const configs::DataConfig& config, uint64_t seed)
    : lengths_(lengths), config_(config), seed_(seed) {
  CF_CHECK(!lengths_.empty(), "data.path: the dataset has no sequences");
  CF_CHECK((config_.batch_sequences > 0) != (config_.batch_tokens > 0),
           "exactly one of data.batch_sequences (", config_.batch_sequences,
           ") and data.batch_tokens (", config_.batch_tokens, ") must be > 0");
}

std::vector<int64_t> GlobalBatchSampler::epoch_order(int64_t epoch) const {
  std::vector<int64_t> order(lengths_.size());
  std::iota(order.begin(), order.end(), int64_t{0});
  if (config_.shuffle) {
    core::Rng rng(core::mix64(seed_ ^ core::mix64(static_cast<uint64_t>(epoch) + 0x5eed)));
    rng.shuffle(order);
  }
  return order;
}

void GlobalBatchSampler::load_epoch(int64_t epoch) {
  if (loaded_epoch_ == epoch) return;
  order_ = epoch_order(epoch);
  loaded_epoch_ = epoch;
}

GlobalBatch GlobalBatchSampler::next() {
  if (position_.cursor >= dataset_size()) {
    ++position_.epoch;
    position_.cursor = 0;
  }
  load_epoch(position_.epoch);
  GlobalBatch batch;
  batch.step = position_.step;
  batch.epoch = position_.epoch;
  while (position_.cursor < dataset_size()) {
    const int64_t sequence = order_[static_cast<size_t>(position_.cursor)];
    const int64_t length = lengths_[static_cast<size_t>(sequence)];
    if (config_.batch_sequences > 0) {
      if (static_cast<int64_t>(batch.sequences.size()) == config_.batch_sequences) break;
    } else if (!batch.sequences.empty() && batch.tokens + length > config_.batch_tokens) {
      break;
    }
    batch.sequences.push_back(sequence);
    batch.tokens += length;
    ++position_.cursor;
  }
  ++position_.step;
  return batch;
}

void GlobalBatchSampler::restore(const SamplerPosition& position) {
  CF_CHECK(position.epoch >= 0 && position.step >= 0, "sampler position has negative epoch (",
           position.epoch, ") or step (", position.step, ")");
  CF_CHECK(position.cursor >= 0 && position.cursor <= dataset_size(), "sampler position cursor ",
           position.cursor, " is outside the dataset of ", dataset_size(),
           " sequences; was the checkpoint made with another dataset?");
  position_ = position;
}

}  // namespace chunkflow::data
