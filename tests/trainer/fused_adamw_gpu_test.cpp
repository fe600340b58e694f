// FusedAdamW against LibTorch's per-tensor AdamW on a GPU (the multi-tensor CUDA kernel).
#include <gtest/gtest.h>

#include "kernels/device.h"
#include "tests/support/adamw_comparison.h"
#include "tests/support/gpu_skip.h"

namespace chunkflow::trainer {
namespace {

TEST(FusedAdamWGpuTest, MatchesPerTensorAdamWOnCuda) {
  CHUNKFLOW_SKIP_WITHOUT_CUDA();
  testing::expect_same_updates(torch::Device(torch::kCUDA, 0));
}

}  // namespace
}  // namespace chunkflow::trainer
