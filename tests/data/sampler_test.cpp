// Global batch sampler: determinism, coverage of every sequence once per epoch, budgets, resume.
#include "data/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "core/error.h"
#include "core/random.h"

namespace chunkflow::data {
namespace {

std::vector<int32_t> random_lengths(int64_t count, uint64_t seed) {
  core::Rng rng(seed);
  std::vector<int32_t> lengths(static_cast<size_t>(count));
  for (auto& length : lengths) length = static_cast<int32_t>(rng.below(rng.uniform() < 0.02 ? 5000 : 300));
  return lengths;
}

configs::DataConfig by_tokens(int64_t budget) {
  configs::DataConfig config;
  config.batch_tokens = budget;
  config.batch_sequences = 0;
  return config;
}

configs::DataConfig by_sequences(int64_t count) {
  configs::DataConfig config;
  config.batch_tokens = 0;
  config.batch_sequences = count;
  return config;
}

TEST(SamplerTest, EveryEpochVisitsEverySequenceExactlyOnce) {
  const auto lengths = random_lengths(1000, 1);
  GlobalBatchSampler sampler(lengths, by_tokens(4096), 42);
  for (int64_t epoch = 0; epoch < 3; ++epoch) {
    std::vector<int64_t> seen;
    do {
      const GlobalBatch batch = sampler.next();
      ASSERT_EQ(batch.epoch, epoch);
      int64_t tokens = 0;
      for (const int64_t s : batch.sequences) tokens += lengths[static_cast<size_t>(s)];
      ASSERT_EQ(tokens, batch.tokens);
      ASSERT_TRUE(batch.tokens <= 4096 || batch.sequences.size() == 1) << "over budget with several sequences";
      seen.insert(seen.end(), batch.sequences.begin(), batch.sequences.end());
    } while (sampler.position().cursor < sampler.dataset_size());
    std::sort(seen.begin(), seen.end());
    ASSERT_EQ(seen.size(), lengths.size());
    for (size_t i = 0; i < seen.size(); ++i) ASSERT_EQ(seen[i], static_cast<int64_t>(i));
  }
}

TEST(SamplerTest, SequenceLongerThanTheBudgetFormsItsOwnBatch) {
  const std::vector<int32_t> lengths = {10, 5000, 10, 10};
  auto config = by_tokens(100);
  config.shuffle = false;
  GlobalBatchSampler sampler(lengths, config, 1);
  EXPECT_EQ(sampler.next().sequences, (std::vector<int64_t>{0}));
  EXPECT_EQ(sampler.next().sequences, (std::vector<int64_t>{1}));
  EXPECT_EQ(sampler.next().sequences, (std::vector<int64_t>{2, 3}));
  const GlobalBatch next_epoch = sampler.next();
  EXPECT_EQ(next_epoch.epoch, 1);
  EXPECT_EQ(next_epoch.step, 3);
}

TEST(SamplerTest, BatchesBySequenceCountWithAShortLastBatch) {
  const auto lengths = random_lengths(10, 2);
  GlobalBatchSampler sampler(lengths, by_sequences(4), 7);
  EXPECT_EQ(sampler.next().sequences.size(), 4u);
  EXPECT_EQ(sampler.next().sequences.size(), 4u);
  EXPECT_EQ(sampler.next().sequences.size(), 2u);
  EXPECT_EQ(sampler.next().epoch, 1);
}

TEST(SamplerTest, SameSeedSameOrderOtherSeedOrEpochOtherOrder) {
  const auto lengths = random_lengths(500, 3);
  GlobalBatchSampler first(lengths, by_sequences(16), 11), second(lengths, by_sequences(16), 11),
      other(lengths, by_sequences(16), 12);
  EXPECT_EQ(first.epoch_order(0), second.epoch_order(0));
  EXPECT_NE(first.epoch_order(0), other.epoch_order(0));
  EXPECT_NE(first.epoch_order(0), first.epoch_order(1));
  for (int step = 0; step < 50; ++step) ASSERT_EQ(first.next().sequences, second.next().sequences);
}

TEST(SamplerTest, OrderIsPinnedAcrossPlatformsAndReleases) {
  // The shuffle is our own (not std::shuffle), so this order must never change: resuming a run
  // on another machine or after an upgrade depends on it.
  const std::vector<int32_t> lengths(8, 1);
  GlobalBatchSampler sampler(lengths, by_sequences(8), 1234);
  const std::vector<int64_t> order = sampler.epoch_order(0);
  std::vector<int64_t> sorted = order;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(order, sampler.epoch_order(0));
  // Pinned value, recorded from this implementation.
  EXPECT_EQ(order, (std::vector<int64_t>{5, 0, 2, 4, 1, 7, 3, 6}));
}

TEST(SamplerTest, RestoredSamplerContinuesExactly) {
  const auto lengths = random_lengths(300, 4);
  GlobalBatchSampler reference(lengths, by_tokens(2000), 5);
  for (int step = 0; step < 37; ++step) reference.next();  // crosses an epoch boundary
  const SamplerPosition saved = reference.position();
  GlobalBatchSampler resumed(lengths, by_tokens(2000), 5);
  resumed.restore(saved);
  for (int step = 0; step < 40; ++step) {
    const GlobalBatch want = reference.next(), got = resumed.next();
    ASSERT_EQ(got.sequences, want.sequences) << "step " << want.step;
    ASSERT_EQ(got.step, want.step);
    ASSERT_EQ(got.epoch, want.epoch);
  }
}

TEST(SamplerTest, RejectsBadConfigurationAndPositions) {
  const auto lengths = random_lengths(10, 5);
  configs::DataConfig both = by_tokens(100);
  both.batch_sequences = 3;
  EXPECT_THROW(GlobalBatchSampler(lengths, both, 1), core::Error);
  EXPECT_THROW(GlobalBatchSampler({}, by_tokens(100), 1), core::Error);
  GlobalBatchSampler sampler(lengths, by_tokens(100), 1);
  EXPECT_THROW(sampler.restore(SamplerPosition{0, 11, 0}), core::Error);
  EXPECT_THROW(sampler.restore(SamplerPosition{-1, 0, 0}), core::Error);
}

TEST(SamplerTest, WithoutShuffleTheOrderIsTheDatasetOrder) {
  const auto lengths = random_lengths(20, 6);
  auto config = by_sequences(5);
  config.shuffle = false;
  GlobalBatchSampler sampler(lengths, config, 9);
  EXPECT_EQ(sampler.next().sequences, (std::vector<int64_t>{0, 1, 2, 3, 4}));
}

}  // namespace
}  // namespace chunkflow::data
