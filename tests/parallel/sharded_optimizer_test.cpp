// The ZeRO-1 sharded AdamW against replicated AdamW on all-reduced gradients, run alone and under
// `mpirun -np 3` (an odd group, so buckets are padded and some slices hold padding only). Every
// rank runs every test; the exit status is agreed over all ranks.
#include <gtest/gtest.h>

#include <vector>

#include "core/error.h"
#include "parallel/data_parallel.h"
#include "parallel/sharded_optimizer.h"
#include "tests/support/expect_error.h"
#include "tests/support/mpi_test_main.h"

namespace chunkflow::parallel {
namespace {

// Odd shapes in two optimizer groups (with and without weight decay), the same on every rank.
std::vector<std::vector<torch::Tensor>> make_parameters() {
  torch::manual_seed(1234);
  const std::vector<std::vector<int64_t>> decayed = {{7, 5}, {3, 3, 3}, {40, 2}};
  const std::vector<std::vector<int64_t>> plain = {{13}, {1}, {9}};
  std::vector<std::vector<torch::Tensor>> groups(2);
  for (const auto& shape : decayed) groups[0].push_back(torch::randn(shape).requires_grad_(true));
  for (const auto& shape : plain) groups[1].push_back(torch::randn(shape).requires_grad_(true));
  return groups;
}

std::vector<std::vector<torch::Tensor>> copy_of(const std::vector<std::vector<torch::Tensor>>& groups) {
  std::vector<std::vector<torch::Tensor>> copies;
  for (const auto& group : groups) {
    copies.emplace_back();
    for (const auto& parameter : group) copies.back().push_back(parameter.detach().clone().requires_grad_(true));
  }
  return copies;
}

std::vector<torch::optim::OptimizerParamGroup> optimizer_groups(const std::vector<std::vector<torch::Tensor>>& groups) {
  std::vector<torch::optim::OptimizerParamGroup> result;
  for (size_t g = 0; g < groups.size(); ++g) {
    result.emplace_back(groups[g], std::make_unique<torch::optim::AdamWOptions>(
                                       torch::optim::AdamWOptions(0.01).betas({0.9, 0.95}).weight_decay(g == 0 ? 0.1 : 0.0)));
  }
  return result;
}

std::unique_ptr<torch::optim::AdamW> make_adamw(std::vector<torch::optim::OptimizerParamGroup> groups) {
  return std::make_unique<torch::optim::AdamW>(std::move(groups), torch::optim::AdamWOptions(0.01));
}

// Step `step`'s gradients on this rank: random, different on every rank; rank 1 leaves the
// second parameter of the second group without a gradient (a rank that had no work for it).
void set_gradients(const std::vector<std::vector<torch::Tensor>>& groups, int step, int rank) {
  torch::manual_seed(100 * step + rank);
  for (size_t g = 0; g < groups.size(); ++g) {
    for (size_t i = 0; i < groups[g].size(); ++i) {
      torch::Tensor parameter = groups[g][i];
      parameter.mutable_grad() = (g == 1 && i == 1 && rank == 1) ? torch::Tensor() : torch::randn_like(parameter);
    }
  }
}

double relative_difference(const torch::Tensor& got, const torch::Tensor& want) {
  return (got - want).norm().item<double>() / std::max(want.norm().item<double>(), 1e-30);
}

void expect_equal_parameters(const std::vector<std::vector<torch::Tensor>>& got,
                             const std::vector<std::vector<torch::Tensor>>& want, const std::string& what) {
  for (size_t g = 0; g < got.size(); ++g) {
    for (size_t i = 0; i < got[g].size(); ++i) {
      EXPECT_LE(relative_difference(got[g][i], want[g][i]), 1e-6) << what << ": group " << g << " parameter " << i;
    }
  }
}

std::vector<torch::Tensor> flat(const std::vector<std::vector<torch::Tensor>>& groups) {
  std::vector<torch::Tensor> all;
  for (const auto& group : groups) all.insert(all.end(), group.begin(), group.end());
  return all;
}

// Replicated data parallelism: gradients all-reduced, every rank runs the whole AdamW.
void replicated_step(torch::optim::AdamW& adamw, const std::vector<std::vector<torch::Tensor>>& groups,
                     Communicator& world) {
  all_reduce_gradients(flat(groups), world);
  adamw.step();
}

TEST(ShardedAdamWTest, MatchesReplicatedAdamWOnSummedGradients) {
  Communicator& world = chunkflow::testing::test_world();
  for (const int64_t bucket_bytes : {int64_t{64}, int64_t{1} << 20}) {  // many buckets (one parameter larger than a bucket), one per group
    const auto sharded_parameters = make_parameters();
    const auto replicated_parameters = copy_of(sharded_parameters);
    ShardedAdamW sharded(optimizer_groups(sharded_parameters), world, make_adamw, bucket_bytes);
    auto replicated = make_adamw(optimizer_groups(replicated_parameters));
    for (int step = 0; step < 4; ++step) {
      set_gradients(sharded_parameters, step, world.rank());
      set_gradients(replicated_parameters, step, world.rank());
      sharded.reduce_scatter_gradients();
      sharded.step();
      replicated_step(*replicated, replicated_parameters, world);
      expect_equal_parameters(sharded_parameters, replicated_parameters,
                              "step " + std::to_string(step) + ", bucket bytes " + std::to_string(bucket_bytes));
    }
    // The moments, gathered whole, are replicated AdamW's.
    const ShardedAdamW::FullState state = sharded.gather_state();
    ASSERT_EQ(state.size(), flat(sharded_parameters).size());
    const auto sharded_all = flat(sharded_parameters), replicated_all = flat(replicated_parameters);
    for (size_t i = 0; i < sharded_all.size(); ++i) {
      const auto& got = static_cast<const torch::optim::AdamWParamState&>(*state.at(sharded_all[i].unsafeGetTensorImpl()));
      const auto& want = static_cast<const torch::optim::AdamWParamState&>(
          *replicated->state().at(replicated_all[i].unsafeGetTensorImpl()));
      EXPECT_EQ(got.step(), want.step());
      EXPECT_EQ(got.exp_avg().sizes(), want.exp_avg().sizes());
      EXPECT_LE(relative_difference(got.exp_avg(), want.exp_avg()), 1e-6) << "exp_avg of parameter " << i;
      EXPECT_LE(relative_difference(got.exp_avg_sq(), want.exp_avg_sq()), 1e-6) << "exp_avg_sq of parameter " << i;
    }
  }
}

// Whole state keyed by other parameters (what a checkpoint load does): `from`'s i-th -> `to`'s i-th.
ShardedAdamW::FullState rekeyed(const ShardedAdamW::FullState& state, const std::vector<torch::Tensor>& from,
                                const std::vector<torch::Tensor>& to) {
  ShardedAdamW::FullState result;
  for (size_t i = 0; i < from.size(); ++i) {
    const auto& whole = static_cast<const torch::optim::AdamWParamState&>(*state.at(from[i].unsafeGetTensorImpl()));
    auto copy = std::make_unique<torch::optim::AdamWParamState>();
    copy->step(whole.step());
    copy->exp_avg(whole.exp_avg().clone());
    copy->exp_avg_sq(whole.exp_avg_sq().clone());
    result[to[i].unsafeGetTensorImpl()] = std::move(copy);
  }
  return result;
}

TEST(ShardedAdamWTest, StateResumesOnAnotherBucketingAndOnReplicatedAdamW) {
  Communicator& world = chunkflow::testing::test_world();
  const auto original = make_parameters();
  ShardedAdamW first(optimizer_groups(original), world, make_adamw, 96);
  EXPECT_TRUE(first.gather_state().empty()) << "no state before the first step";
  for (int step = 0; step < 2; ++step) {
    set_gradients(original, step, world.rank());
    first.reduce_scatter_gradients();
    first.step();
  }
  const ShardedAdamW::FullState saved = first.gather_state();
  // Only the ranks that keep it hold the gathered state.
  const ShardedAdamW::FullState kept_by_rank_0 = first.gather_state(world.rank() == 0);
  EXPECT_EQ(kept_by_rank_0.size(), world.rank() == 0 ? saved.size() : 0u);

  const auto resharded = copy_of(original), replicated = copy_of(original);
  ShardedAdamW second(optimizer_groups(resharded), world, make_adamw, 200);
  second.load_state(rekeyed(saved, flat(original), flat(resharded)));
  auto replicated_adamw = make_adamw(optimizer_groups(replicated));
  replicated_adamw->state() = rekeyed(saved, flat(original), flat(replicated));
  for (int step = 2; step < 4; ++step) {
    for (const auto* parameters : {&original, &resharded, &replicated}) set_gradients(*parameters, step, world.rank());
    first.reduce_scatter_gradients();
    first.step();
    second.reduce_scatter_gradients();
    second.step();
    replicated_step(*replicated_adamw, replicated, world);
    expect_equal_parameters(resharded, original, "resumed on other buckets, step " + std::to_string(step));
    expect_equal_parameters(replicated, original, "resumed on replicated AdamW, step " + std::to_string(step));
  }
}

TEST(ShardedAdamWTest, GradientNormFromSlicesIsTheWholeGradientsNorm) {
  Communicator& world = chunkflow::testing::test_world();
  const auto parameters = make_parameters();
  ShardedAdamW sharded(optimizer_groups(parameters), world, make_adamw, 64);
  set_gradients(parameters, 7, world.rank());
  std::vector<torch::Tensor> summed;
  for (const auto& parameter : flat(parameters)) {
    torch::Tensor gradient = parameter.grad().defined() ? parameter.grad().clone() : torch::zeros_like(parameter);
    world.all_reduce(gradient, ReduceOp::kSum);
    summed.push_back(gradient);
  }
  sharded.reduce_scatter_gradients();
  const auto whole_square_sum = [&](size_t skipped) {
    double squares = 0;
    for (size_t i = 0; i < summed.size(); ++i) {
      if (i != skipped) squares += summed[i].to(torch::kFloat64).square().sum().item<double>();
    }
    return squares;
  };
  for (const size_t skipped : {summed.size(), size_t{2}}) {
    torch::Tensor squares = torch::tensor({sharded.gradient_square_sum([&](size_t i) { return i != skipped; })},
                                          torch::kFloat64);
    world.all_reduce(squares, ReduceOp::kSum);
    EXPECT_NEAR(squares.item<double>(), whole_square_sum(skipped), 1e-9 * whole_square_sum(skipped))
        << "parameter skipped: " << skipped;
  }
  sharded.scale_gradients(0.5);
  torch::Tensor halved = torch::tensor({sharded.gradient_square_sum()}, torch::kFloat64);
  world.all_reduce(halved, ReduceOp::kSum);
  EXPECT_NEAR(halved.item<double>(), 0.25 * whole_square_sum(summed.size()), 1e-9 * whole_square_sum(summed.size()));
}

TEST(ShardedAdamWTest, RefusesParametersItCannotShard) {
  Communicator& world = chunkflow::testing::test_world();
  std::vector<torch::optim::OptimizerParamGroup> doubles;
  doubles.emplace_back(std::vector<torch::Tensor>{torch::zeros({3}, torch::kFloat64).requires_grad_(true)});
  chunkflow::testing::expect_error_mentions([&] { ShardedAdamW(doubles, world, make_adamw); },
                                            {"parameters must be contiguous float32", "Double"});
  std::vector<torch::optim::OptimizerParamGroup> strided;
  strided.emplace_back(std::vector<torch::Tensor>{torch::zeros({4, 4}).t().requires_grad_(true)});
  chunkflow::testing::expect_error_mentions([&] { ShardedAdamW(strided, world, make_adamw); }, {"not contiguous"});
}

}  // namespace
}  // namespace chunkflow::parallel
