// The DP cost model calibrated from measured compute times: recovers known coefficients, follows
// a change, and keeps the prior's ratio when measurements cannot separate the two terms.
#include <gtest/gtest.h>

#include "core/random.h"
#include "parallel/data_parallel.h"

namespace chunkflow::parallel {
namespace {

TEST(CostCalibrationTest, RecoversPerTokenAndPerEntryCostsFromNoisyRankTimes) {
  const double per_token = 2e-6, per_entry = 3e-9;  // seconds
  CostCalibration calibration(GroupCostModel{1.0, 1.0});
  core::Rng rng(5);
  for (int step = 0; step < 30; ++step) {
    torch::Tensor pooled = torch::zeros({6}, torch::kFloat64);
    for (int rank = 0; rank < 4; ++rank) {
      // Ranks get different mixes of short (token-heavy) and long (attention-heavy) work.
      const double tokens = 2000 + 6000 * rng.uniform();
      const double entries = 1e5 + 4e6 * rng.uniform();
      const double seconds = (per_token * tokens + per_entry * entries) * (1 + 0.02 * (rng.uniform() - 0.5));
      pooled += CostCalibration::observation(tokens, entries, seconds);
    }
    calibration.add_step(pooled);
  }
  ASSERT_TRUE(calibration.calibrated());
  const GroupCostModel model = calibration.model();
  EXPECT_NEAR(model.per_token, per_token, 0.05 * per_token);
  EXPECT_NEAR(model.per_attention_entry, per_entry, 0.05 * per_entry);
}

TEST(CostCalibrationTest, ForgettingFollowsAMachineThatGotSlower) {
  CostCalibration calibration(GroupCostModel{1.0, 1.0}, 0.5);
  const auto step = [&](double scale) {
    torch::Tensor pooled = CostCalibration::observation(1000, 1e5, scale * (1e-6 * 1000 + 1e-8 * 1e5)) +
                           CostCalibration::observation(3000, 9e6, scale * (1e-6 * 3000 + 1e-8 * 9e6));
    calibration.add_step(pooled);
  };
  for (int i = 0; i < 10; ++i) step(1.0);
  for (int i = 0; i < 20; ++i) step(2.0);
  EXPECT_NEAR(calibration.model().per_token, 2e-6, 1e-8);
  EXPECT_NEAR(calibration.model().per_attention_entry, 2e-8, 1e-10);
}

TEST(CostCalibrationTest, KeepsThePriorRatioWhenTermsCannotBeSeparated) {
  const GroupCostModel prior{100.0, 1.0};
  CostCalibration calibration(prior);
  EXPECT_EQ(calibration.model().per_token, prior.per_token);  // no observation yet
  // Every rank did the same mix: only the overall scale is measurable.
  calibration.add_step(CostCalibration::observation(1000, 5000, 0.2) + CostCalibration::observation(2000, 10000, 0.4));
  EXPECT_FALSE(calibration.calibrated());
  const GroupCostModel model = calibration.model();
  EXPECT_NEAR(model.per_token / model.per_attention_entry, 100.0, 1e-9);
  EXPECT_NEAR(model.per_token * 1000 + model.per_attention_entry * 5000, 0.2, 1e-12);
}

}  // namespace
}  // namespace chunkflow::parallel
