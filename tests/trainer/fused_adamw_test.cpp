// FusedAdamW against LibTorch's per-tensor AdamW on the CPU (the CUDA case is in
// fused_adamw_gpu_test.cpp), and a trainer run with optim.fused on and off giving the same losses.
#include "trainer/fused_adamw.h"

#include <gtest/gtest.h>

#include <vector>

#include "tests/support/adamw_comparison.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tiny_run.h"
#include "trainer/trainer.h"

namespace chunkflow::trainer {
namespace {

TEST(FusedAdamWTest, MatchesPerTensorAdamWOnTheCpu) { testing::expect_same_updates(torch::kCPU); }

TEST(FusedAdamWTest, TrainingWithAndWithoutFusionGivesTheSameLosses) {
  testing::TempDir fused_dir, plain_dir;
  configs::Config fused = testing::tiny_run(fused_dir);
  configs::Config plain = testing::tiny_run(plain_dir);
  fused.run.steps = plain.run.steps = 8;
  plain.optim.fused = false;
  ASSERT_TRUE(fused.optim.fused);
  const std::vector<StepMetrics> fused_steps = Trainer(fused).train();
  const std::vector<StepMetrics> plain_steps = Trainer(plain).train();
  ASSERT_EQ(fused_steps.size(), plain_steps.size());
  for (size_t step = 0; step < fused_steps.size(); ++step) {
    EXPECT_NEAR(fused_steps[step].loss, plain_steps[step].loss, 1e-5 * std::abs(plain_steps[step].loss)) << step;
  }
}

}  // namespace
}  // namespace chunkflow::trainer
