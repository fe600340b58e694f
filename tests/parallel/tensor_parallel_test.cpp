// Tensor parallelism is exact: under `mpirun -np 2`, a model split over tp = 2 ranks holds the
// single-rank model's weights (each rank its slice) and, trained on chunks (packed, split with a
// K/V state, recomputed), with and without sequence parallelism, gives its loss and gradients. The comparison is fp32 against fp32 (the
// whole model on every rank), which differ only in summation order (the row-parallel sums).
#include <gtest/gtest.h>

#include <cstdio>

#include "core/error.h"
#include "parallel/tensor_parallel.h"
#include "tests/support/chunked_step.h"
#include "tests/support/expect_error.h"
#include "tests/support/mpi_test_main.h"
#include "tests/support/test_seed.h"
#include "trainer/step_planner.h"

namespace chunkflow::parallel {
namespace {

configs::ModelConfig tp_model(uint64_t variant) {
  configs::ModelConfig config;
  config.vocab_size = 62;
  config.hidden_size = 32;
  config.intermediate_size = 44;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 4;
  config.num_key_value_heads = variant % 2 == 0 ? 2 : 4;
  config.family = variant % 3 == 0 ? "qwen2" : "llama";
  config.attention_bias = config.family == "qwen2" || variant % 4 == 1;  // llama's covers o_proj's bias
  config.tie_word_embeddings = variant % 5 < 2;
  config.initializer_range = 0.2;
  return config;
}

double tensor_error(const torch::Tensor& got, const torch::Tensor& want, double floor) {
  return (got - want).norm().item<double>() / std::max(want.norm().item<double>(), floor);
}

TEST(TensorParallelTest, EveryRankHoldsItsSliceOfTheSingleRankWeights) {
  Communicator& world = chunkflow::testing::test_world();
  for (uint64_t variant = 0; variant < 6; ++variant) {
    const configs::ModelConfig config = tp_model(variant);
    const models::CausalLM whole(config, models::ModelStage{}, 77);
    const models::CausalLM split(config, models::ModelStage{}, 77, tensor_parallel_group(world));
    const auto whole_parameters = whole->named_parameters();
    ASSERT_EQ(split->named_parameters().size(), whole_parameters.size());
    for (const auto& item : split->named_parameters()) {
      const torch::Tensor want =
          models::tensor_parallel_slice(whole_parameters[item.key()], item.key(), world.rank(), world.size());
      EXPECT_TRUE(torch::equal(item.value(), want)) << item.key() << " variant " << variant;
    }
    EXPECT_EQ(split->local_kv_heads(), config.num_key_value_heads / world.size());
    // The memory estimate's parameter count of a tp rank.
    int64_t held = 0;
    for (const auto& parameter : split->parameters()) held += parameter.numel();
    EXPECT_EQ(trainer::stage_parameter_count(config, 0, 1, world.size()), held) << "variant " << variant;
  }
}

TEST(TensorParallelTest, ChunkedTrainingMatchesTheWholeModel) {
  Communicator& world = chunkflow::testing::test_world();
  // Every rank draws the same cases: rank 0's seed is broadcast.
  torch::Tensor seed = torch::tensor({static_cast<int64_t>(chunkflow::testing::pick_seed() >> 1)}, torch::kInt64);
  world.broadcast(seed, 0);
  if (world.rank() == 0) std::printf("seed %lld (replay with CHUNKFLOW_TEST_SEED)\n", static_cast<long long>(seed.item<int64_t>()));
  double worst_loss = 0, worst_gradient = 0;
  for (uint64_t variant = 0; variant < 8; ++variant) {
    const configs::ModelConfig config = tp_model(variant);
    const int64_t chunk_size = std::vector<int64_t>{7, 16, 30}[variant % 3];
    const auto batch = chunkflow::testing::random_sequences(static_cast<uint64_t>(seed.item<int64_t>()) + variant, 6,
                                                            chunk_size, config.vocab_size);
    configs::ChunkingConfig chunking;
    chunking.chunk_size = chunk_size;
    chunking.pack_into_tail = variant % 2 == 0;
    const int64_t resident = 1 + static_cast<int64_t>(variant % 3);  // 1 and 2 recompute chunks of split sequences
    models::CausalLM whole(config, models::ModelStage{}, 5 + variant);
    // Odd variants split the residual stream by rows (sequence parallelism): norms' and o_proj
    // bias's gradients are then partial on each rank and summed over the group, as the trainer does.
    const bool sequence_parallel = variant % 2 == 1;
    models::CausalLM split(config, models::ModelStage{}, 5 + variant, tensor_parallel_group(world, sequence_parallel));
    const auto want = chunkflow::testing::chunked_step(whole, batch, chunking, resident);
    auto got = chunkflow::testing::chunked_step(split, batch, chunking, resident);
    if (sequence_parallel) {
      const auto names = split->named_parameters().keys();
      for (size_t i = 0; i < names.size(); ++i) {
        if (models::tensor_parallel_dim(names[i]) < 0) world.all_reduce(got.gradients[i], ReduceOp::kSum);
      }
    }
    const double loss_error = std::abs(got.loss - want.loss) / std::abs(want.loss);
    EXPECT_LE(loss_error, 1e-5) << "variant " << variant;
    worst_loss = std::max(worst_loss, loss_error);
    // Per tensor against its own norm, floored at a tenth of its even share of the model's gradient
    // norm (k_proj.bias's gradient nearly cancels: see scheduler_exactness_test.cpp).
    double model_norm = 0;
    int64_t model_numel = 0;
    for (const auto& gradient : want.gradients) {
      model_norm += gradient.pow(2).sum().item<double>();
      model_numel += gradient.numel();
    }
    model_norm = std::sqrt(model_norm);
    const auto names = whole->named_parameters().keys();
    for (size_t i = 0; i < names.size(); ++i) {
      const torch::Tensor expected =
          models::tensor_parallel_slice(want.gradients[i], names[i], world.rank(), world.size());
      const double even_share =
          model_norm * std::sqrt(static_cast<double>(want.gradients[i].numel()) / static_cast<double>(model_numel));
      const double error = tensor_error(got.gradients[i], expected, 0.1 * even_share);
      EXPECT_LE(error, 1e-5) << names[i] << " variant " << variant;
      worst_gradient = std::max(worst_gradient, error);
    }
  }
  if (world.rank() == 0) {
    std::printf("tp = %d vs the whole model, 8 random cases: worst relative error loss %.3g, gradient %.3g\n",
                world.size(), worst_loss, worst_gradient);
  }
}

TEST(TensorParallelTest, ModelsThatDoNotSplitAreRefusedByKey) {
  configs::ModelConfig config = tp_model(0);
  config.num_key_value_heads = 1;
  chunkflow::testing::expect_error_mentions([&] { models::check_tensor_parallel(config, 2); },
                                            {"parallel.tp = 2", "model.num_key_value_heads = 1"});
  config = tp_model(0);
  config.vocab_size = 63;
  chunkflow::testing::expect_error_mentions([&] { models::check_tensor_parallel(config, 2); },
                                            {"model.vocab_size = 63", "not a multiple of 2"});
  config = tp_model(0);
  config.intermediate_size = 45;
  chunkflow::testing::expect_error_mentions([&] { models::check_tensor_parallel(config, 2); },
                                            {"model.intermediate_size = 45"});
}

}  // namespace
}  // namespace chunkflow::parallel
