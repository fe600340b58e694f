// How a GPU test decides it cannot run: this build has no CUDA kernels, or no GPU is usable. Where
// a GPU is expected (CHUNKFLOW_REQUIRE_GPU=1, set by scripts/device_check.sh on the GPU machine),
// that is a failure rather than a skip, so a misbuilt or misconfigured GPU run cannot look green.
#pragma once

#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <cstdlib>
#include <string>

#include "kernels/device.h"

namespace chunkflow::testing {

// Why CUDA tests cannot run here ("" when they can).
inline std::string why_no_cuda() {
  if (!kernels::built_with_cuda()) return "this build has no CUDA kernels (nvcc was not found at configure)";
  if (!torch::cuda::is_available()) return "no usable CUDA device: " + kernels::describe_devices();
  return "";
}

inline bool gpu_required() {
  const char* value = std::getenv("CHUNKFLOW_REQUIRE_GPU");
  return value != nullptr && std::string(value) == "1";
}

}  // namespace chunkflow::testing

// In a test body or SetUp(): skips (or, with CHUNKFLOW_REQUIRE_GPU=1, fails) without CUDA.
#define CHUNKFLOW_SKIP_WITHOUT_CUDA()                                                      \
  if (const std::string cf_why_no_cuda = ::chunkflow::testing::why_no_cuda();             \
      !cf_why_no_cuda.empty()) {                                                           \
    if (::chunkflow::testing::gpu_required()) FAIL() << "CHUNKFLOW_REQUIRE_GPU=1: " << cf_why_no_cuda; \
    GTEST_SKIP() << cf_why_no_cuda;                                                        \
  }
