// Training on CUDA, against the same references as on the CPU:
//  - float32 on the GPU (the composite attention backend) equals float64 whole-sequence training
//    within the CPU rule (1e-5 relative, or 2x plain unchunked float32 for cancellation-prone
//    tensors);
//  - bf16 mixed precision on every CUDA attention backend is at most 2x as far from float64 as
//    plain unchunked bf16 training on the GPU (FlashAttention's rule);
//  - chunkflow-train's loop with run.device: cuda follows the CPU run's loss curve and reports
//    peak GPU memory and MFU.
// Every test skips, saying why, where the build has no CUDA kernels or no GPU is usable.
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "kernels/device.h"
#include "tests/support/chunked_step.h"
#include "tests/support/gpu_skip.h"
#include "tests/support/temp_dir.h"
#include "tests/support/test_seed.h"
#include "tests/support/tiny_run.h"
#include "trainer/device_setup.h"
#include "trainer/trainer.h"

namespace chunkflow::trainer {
namespace {

class GpuTrainingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    CHUNKFLOW_SKIP_WITHOUT_CUDA();
    seed_ = testing::pick_seed();
    std::printf("seed %llu (replay with CHUNKFLOW_TEST_SEED)\n", static_cast<unsigned long long>(seed_));
    torch::manual_seed(seed_);
  }

  // head_dim 64: every CUDA attention backend runs it.
  static configs::ModelConfig model_config(const std::string& dtype, const std::string& backend) {
    configs::ModelConfig config;
    config.vocab_size = 96;
    config.hidden_size = 256;
    config.intermediate_size = 320;
    config.num_hidden_layers = 2;
    config.num_attention_heads = 4;
    config.num_key_value_heads = 2;
    config.family = "qwen2";
    config.attention_bias = true;
    config.initializer_range = 0.1;
    config.dtype = dtype;
    config.attention_backend = backend;
    return config;
  }

  uint64_t seed_ = 0;
};

TEST_F(GpuTrainingTest, Float32OnCudaMatchesFloat64WholeSequenceTraining) {
  const configs::ModelConfig config = model_config("float32", "auto");  // auto = composite for float32
  models::CausalLM model(config);
  model->to(torch::Device(torch::kCUDA));
  for (const int64_t chunk_size : {7, 32}) {
    const auto batch = testing::random_sequences(seed_ + static_cast<uint64_t>(chunk_size), 5, chunk_size, config.vocab_size);
    const auto [chunks, plain, reference] = testing::chunked_unchunked_and_reference(model, batch, chunk_size, 1);
    EXPECT_LE(std::abs(chunks.loss - reference.loss) / std::abs(reference.loss), 1e-5) << "chunk_size " << chunk_size;
    const auto names = model->named_parameters().keys();
    for (size_t index = 0; index < names.size(); ++index) {
      const double error = testing::relative_norm_error(chunks.gradients[index], reference.gradients[index]);
      const double plain_error = testing::relative_norm_error(plain.gradients[index], reference.gradients[index]);
      EXPECT_LE(error, std::max(1e-5, 2 * plain_error)) << names[index] << " chunk_size " << chunk_size;
    }
  }
}

TEST_F(GpuTrainingTest, Bfloat16OnEveryCudaBackendIsWithinTwiceUnchunkedBfloat16) {
  for (const std::string backend : {"flash", "chunkflow", "composite"}) {
    const configs::ModelConfig config = model_config("bfloat16", backend);
    torch::manual_seed(seed_);
    models::CausalLM model(config);
    model->to(torch::Device(torch::kCUDA));
    const int64_t chunk_size = 24;
    const auto batch = testing::random_sequences(seed_, 6, chunk_size, config.vocab_size);
    const auto [chunks, plain, reference] = testing::chunked_unchunked_and_reference(model, batch, chunk_size, 1);
    EXPECT_LE(std::abs(chunks.loss - reference.loss), 2 * std::abs(plain.loss - reference.loss) + 1e-3) << backend;
    const auto names = model->named_parameters().keys();
    double worst = 0;
    for (size_t index = 0; index < names.size(); ++index) {
      const double error = testing::relative_norm_error(chunks.gradients[index], reference.gradients[index]);
      const double plain_error = testing::relative_norm_error(plain.gradients[index], reference.gradients[index]);
      const double allowed = std::max(2 * plain_error, 1.0 / 256);
      worst = std::max(worst, error / allowed);
      EXPECT_LE(error, allowed) << names[index] << " backend " << backend << ": chunked " << error << " vs unchunked "
                                << plain_error;
    }
    std::printf("backend %s: worst chunked error / allowed %.3f\n", backend.c_str(), worst);
  }
}

TEST_F(GpuTrainingTest, TrainerOnCudaFollowsTheCpuLossCurveAndReportsGpuMetrics) {
  testing::TempDir dir;
  configs::Config config = testing::tiny_run(dir);
  config.run.steps = 6;
  config.logging.tensorboard = false;
  config.checkpoint.interval = -1;
  config.run.device = "cpu";
  config.run.name = "cpu";
  Trainer cpu(config);
  const auto expected = cpu.train();
  config.run.device = "cuda";
  config.run.name = "cuda";
  Trainer cuda(config);
  ASSERT_TRUE(cuda.device().is_cuda());
  const auto got = cuda.train();
  ASSERT_EQ(got.size(), expected.size());
  for (size_t step = 0; step < got.size(); ++step) {
    EXPECT_NEAR(got[step].loss, expected[step].loss, 1e-4 * std::abs(expected[step].loss)) << "step " << step + 1;
    EXPECT_GT(got[step].peak_device_memory_bytes, 0) << "step " << step + 1;
    EXPECT_TRUE(std::isfinite(got[step].mfu) && got[step].mfu > 0) << "step " << step + 1;
  }
  for (const auto& parameter : cuda.model()->parameters()) EXPECT_TRUE(parameter.is_cuda());

  config.model.dtype = "bfloat16";
  config.run.name = "cuda_bf16";
  Trainer mixed(config);
  const auto bf16 = mixed.train();
  EXPECT_TRUE(std::isfinite(bf16.back().loss));
  EXPECT_LT(bf16.back().loss, bf16.front().loss + 0.05) << "bf16 training on CUDA diverged";
}

TEST(DeviceBusyTimerGpuTest, MeasuresTheGpusTimeOfTheQueuedWork) {
  CHUNKFLOW_SKIP_WITHOUT_CUDA();
  const torch::Device device(torch::kCUDA, 0);
  const torch::Tensor matrix = torch::randn({4096, 4096}, torch::TensorOptions().device(device));
  torch::Tensor product = matrix;
  DeviceBusyTimer timer(device);
  synchronize_device(device);
  const auto start = std::chrono::steady_clock::now();
  timer.begin();
  for (int i = 0; i < 50; ++i) product = torch::mm(product, matrix).div_(64.0);  // ~7 TFLOP in float32
  timer.end();
  const double busy = timer.seconds();  // waits for the work
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GT(busy, 0.0);
  EXPECT_LE(busy, wall);
  EXPECT_TRUE(torch::isfinite(product).all().item<bool>());
}

}  // namespace
}  // namespace chunkflow::trainer
