// bfloat16 mixed precision (model.dtype: bfloat16): float32 master weights, gradients and AdamW
// state; layers compute in bf16. Exactness by FlashAttention's rule, on the CPU (whose kernels
// compute bf16 in float32 and round, as the CUDA ones accumulate): chunked + packed bf16 training
// is at most 2x as far from the float64 reference as plain unchunked bf16 training (every
// sequence whole, one per chunk) is. Fresh random data each run (CHUNKFLOW_TEST_SEED replays).
// The same rule on CUDA: gpu_training_gpu_test.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>

#include "core/random.h"
#include "models/transformer.h"
#include "tests/support/chunked_step.h"
#include "tests/support/test_seed.h"

namespace chunkflow::trainer {
namespace {

configs::ModelConfig small_bf16_model(core::Rng& rng) {
  configs::ModelConfig config;
  config.vocab_size = 50 + static_cast<int64_t>(rng.below(30));
  config.hidden_size = 32;
  config.intermediate_size = 48;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 4;
  config.num_key_value_heads = rng.uniform() < 0.5 ? 2 : 4;
  config.tie_word_embeddings = rng.uniform() < 0.3;
  config.family = rng.uniform() < 0.5 ? "llama" : "qwen2";
  config.attention_bias = config.family == "qwen2";
  config.initializer_range = 0.2;
  config.dtype = "bfloat16";
  return config;
}

TEST(MixedPrecisionTest, ChunkedBfloat16TrainingIsWithinTwiceTheErrorOfUnchunkedBfloat16Training) {
  const uint64_t seed = testing::pick_seed();
  std::printf("seed %llu (replay with CHUNKFLOW_TEST_SEED)\n", static_cast<unsigned long long>(seed));
  core::Rng rng(seed);
  torch::manual_seed(seed);
  double worst_ratio = 0, worst_unfloored = 0;
  for (int trial = 0; trial < 6; ++trial) {
    const configs::ModelConfig config = small_bf16_model(rng);
    const int64_t chunk_size = 5 + static_cast<int64_t>(rng.below(20));
    const auto batch = testing::random_sequences(rng.next_u64(), 3 + rng.below(4), chunk_size, config.vocab_size);
    models::CausalLM model(config);

    const testing::ThreeWays step =
        testing::chunked_unchunked_and_reference(model, batch, chunk_size, 1 + static_cast<int64_t>(rng.below(2)));
    const testing::StepGradients& chunks = step.chunked;
    const testing::StepGradients& plain = step.unchunked;
    const testing::StepGradients& reference = step.reference;
    for (const auto& item : model->named_parameters()) {
      ASSERT_EQ(item.value().scalar_type(), torch::kFloat) << item.key() << ": master weights are float32";
      ASSERT_EQ(item.value().grad().scalar_type(), torch::kFloat) << item.key() << ": gradients accumulate in float32";
    }

    EXPECT_LE(std::abs(chunks.loss - reference.loss), 2 * std::abs(plain.loss - reference.loss) + 1e-3)
        << "trial " << trial << " seed " << seed;
    const auto names = model->named_parameters().keys();
    for (size_t index = 0; index < names.size(); ++index) {
      const double error = testing::relative_norm_error(chunks.gradients[index], reference.gradients[index]);
      const double plain_error = testing::relative_norm_error(plain.gradients[index], reference.gradients[index]);
      // bf16 keeps 8 bits: a gradient within 2^-8 relative is as exact as bf16 gets (never the
      // binding bound in practice: unchunked bf16 errors are larger).
      const double allowed = std::max(2 * plain_error, 1.0 / 256);
      worst_ratio = std::max(worst_ratio, error / allowed);
      worst_unfloored = std::max(worst_unfloored, error / (2 * plain_error));
      EXPECT_LE(error, allowed) << names[index] << " chunked error " << error << " vs unchunked bf16 error "
                                << plain_error << " (trial " << trial << ", chunk_size " << chunk_size << ", seed "
                                << seed << ")";
      EXPECT_GT(plain_error, 0) << names[index] << ": bf16 training cannot match float64 exactly; is bf16 on?";
    }
  }
  std::printf("worst chunked error / allowed: %.3f; without the 2^-8 floor: %.3f\n", worst_ratio, worst_unfloored);
}

TEST(MixedPrecisionTest, MasterWeightsKeepUpdatesSmallerThanABfloat16Step) {
  configs::ModelConfig config;
  config.vocab_size = 32;
  config.hidden_size = 16;
  config.intermediate_size = 24;
  config.num_hidden_layers = 1;
  config.num_attention_heads = 2;
  config.num_key_value_heads = 2;
  config.dtype = "bfloat16";
  torch::manual_seed(3);
  models::CausalLM model(config);
  torch::Tensor& weight = model->model->layer_list[0]->mlp->up_proj->weight;
  // The compute copy is bf16 and shared: two calls alias one storage until the master changes.
  const torch::Tensor first = model->compute_weights()(weight);
  EXPECT_EQ(first.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(first.data_ptr(), model->compute_weights()(weight).data_ptr());
  const torch::Tensor before = weight.detach().clone();
  {
    torch::NoGradGuard no_grad;
    weight.add_(1e-6);  // far below bf16's resolution near 0.02 (about 1e-4)
  }
  const torch::Tensor after = model->compute_weights()(weight);
  EXPECT_NE(first.data_ptr(), after.data_ptr()) << "the compute copy must follow an in-place update";
  EXPECT_GT((weight - before).abs().min().item<double>(), 0.0) << "float32 master weights lost the update";
  EXPECT_TRUE(torch::equal(after, weight.detach().to(torch::kBFloat16))) << "the compute copy is the master, rounded";
}

}  // namespace
}  // namespace chunkflow::trainer
