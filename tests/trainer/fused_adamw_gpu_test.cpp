// FusedAdamW against LibTorch's per-tensor AdamW on a GPU (the multi-tensor CUDA kernel).
#include <gtest/gtest.h>

#include "kernels/device.h"
#include "tests/support/adamw_comparison.h"

namespace chunkflow::trainer {
namespace {

TEST(FusedAdamWGpuTest, MatchesPerTensorAdamWOnCuda) {
  if (!kernels::built_with_cuda() || kernels::cuda_device_count() == 0) {
    GTEST_SKIP() << "no CUDA kernels in this build or no usable GPU: " << kernels::describe_devices();
  }
  testing::expect_same_updates(torch::Device(torch::kCUDA, 0));
}

}  // namespace
}  // namespace chunkflow::trainer
