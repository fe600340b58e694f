// Data parallelism is exact: under `mpirun -np 2`, training with parallel.dp = 2 (chunk groups
// balanced over the ranks, gradients all-reduced) gives the single-rank loss curve and weights.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>

#include "parallel/data_parallel.h"
#include "tests/support/mpi_test_main.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tiny_run.h"
#include "trainer/trainer.h"

namespace chunkflow::parallel {
namespace {

configs::Config small_run(const chunkflow::testing::TempDir& dir) {
  configs::Config config = chunkflow::testing::tiny_run(dir);
  config.run.steps = 8;
  config.data.batch_tokens = 600;
  config.optim.warmup_steps = 2;
  config.logging.tensorboard = false;
  return config;
}

class DataParallelTest : public ::testing::TestWithParam<bool> {};

TEST_P(DataParallelTest, TwoRanksReproduceTheSingleRankRun) {
  const bool overlap = GetParam();
  Communicator& world = chunkflow::testing::test_world();
  if (world.size() != 2) GTEST_SKIP() << "needs 2 ranks (run under mpirun -np 2)";
  chunkflow::testing::TempDir dir;
  configs::Config single = small_run(dir);
  single.run.name = "single";
  trainer::Trainer reference(single);
  const auto expected = reference.train();

  configs::Config parallel_config = small_run(dir);
  parallel_config.run.name = "dp2";
  parallel_config.parallel.dp = 2;
  // Buckets of 4 KiB: the tiny model's gradients span many, started during the backward.
  parallel_config.parallel.gradient_bucket_mb = 0.004;
  parallel_config.parallel.overlap_gradient_reduce = overlap;
  trainer::Trainer trainer(parallel_config, &world);
  const auto got = trainer.train();
  ASSERT_EQ(got.size(), expected.size());
  double imbalance = 0;
  for (size_t step = 0; step < got.size(); ++step) {
    EXPECT_NEAR(got[step].loss, expected[step].loss, 1e-5 * std::abs(expected[step].loss)) << "step " << step + 1;
    EXPECT_EQ(got[step].loss_tokens, expected[step].loss_tokens);
    imbalance = std::max(imbalance, got[step].dp_imbalance);
    if (overlap) {
      EXPECT_GT(got[step].overlapped_buckets, 0) << "no bucket started during the backward, step " << step + 1;
    } else {
      EXPECT_EQ(got[step].overlapped_buckets, 0);
    }
  }
  auto reference_parameters = reference.model()->parameters();
  auto parameters = trainer.model()->parameters();
  for (size_t i = 0; i < parameters.size(); ++i) {
    const double error = (parameters[i] - reference_parameters[i]).norm().item<double>() /
                         reference_parameters[i].norm().item<double>();
    EXPECT_LE(error, 1e-5) << "parameter " << i;
  }
  if (world.rank() == 0) {
    std::printf("dp=2 vs single rank over 8 steps (overlap %d): worst DP imbalance %.3f\n", overlap ? 1 : 0, imbalance);
  }
}

INSTANTIATE_TEST_SUITE_P(GradientReduce, DataParallelTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& param) {
                           return param.param ? "Overlapped" : "AfterBackward";
                         });

TEST(DataParallelBalanceTest, GreedyBalancingKeepsSplitSequencesWholeAndEvensTheLoad) {
  std::vector<data::PlanSequence> sequences;
  for (const int64_t length : {900, 30, 40, 50, 60, 700, 20, 10, 500, 80}) sequences.push_back({length, {}});
  const data::ChunkPlan plan = data::build_chunk_plan(sequences, 100);
  const DpAssignment assignment = balance_chunk_groups(plan, 3, GroupCostModel{1.0, 0.0});
  std::vector<int> owner(plan.groups().size(), -1);
  for (int rank = 0; rank < 3; ++rank) {
    for (const int32_t group : assignment.groups_of_rank[static_cast<size_t>(rank)]) {
      EXPECT_EQ(owner[static_cast<size_t>(group)], -1) << "group " << group << " assigned twice";
      owner[static_cast<size_t>(group)] = rank;
    }
  }
  for (const int rank : owner) EXPECT_GE(rank, 0);
  // Tokens 2390 over 3 ranks; the 900-token sequence alone sets the floor.
  EXPECT_LE(assignment.max_cost(), 900.0 + 100.0);
  EXPECT_GE(assignment.imbalance(), 1.0);
}

}  // namespace
}  // namespace chunkflow::parallel
