// The portable generator: pinned values (cross-platform reproducibility) and sane distributions.
#include "core/random.h"

#include <gtest/gtest.h>

#include <cmath>

namespace chunkflow::core {
namespace {

TEST(RandomTest, SequenceIsPinned) {
  Rng rng(42);
  const uint64_t first = rng.next_u64();
  Rng again(42);
  EXPECT_EQ(again.next_u64(), first);
  EXPECT_NE(Rng(43).next_u64(), first);
  EXPECT_EQ(mix64(0), 0xE220A8397B1DCDAFull);  // SplitMix64's published first output for seed 0
}

TEST(RandomTest, UniformBelowAndNormalHaveTheRightMoments) {
  Rng rng(1);
  double sum = 0, sum_sq = 0;
  int64_t counts[10] = {};
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const double u = rng.uniform();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    ++counts[rng.below(10)];
    const double z = rng.normal();
    sum += z;
    sum_sq += z * z;
  }
  for (const int64_t count : counts) EXPECT_NEAR(count, n / 10, n / 100);
  EXPECT_NEAR(sum / n, 0.0, 0.02);
  EXPECT_NEAR(sum_sq / n, 1.0, 0.02);
}

}  // namespace
}  // namespace chunkflow::core
