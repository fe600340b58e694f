// The device query must treat "no driver / no GPU" as zero devices, never as a crash or error.
#include "kernels/device.h"

#include <gtest/gtest.h>

namespace chunkflow::kernels {
namespace {

TEST(DeviceTest, CountIsNonNegativeAndStableWithoutThrowing) {
  const int first = cuda_device_count();
  EXPECT_GE(first, 0);
  EXPECT_EQ(cuda_device_count(), first);
  if (!built_with_cuda()) {
    EXPECT_EQ(first, 0);
  }
}

TEST(DeviceTest, DescriptionSaysWhyThereIsNoDevice) {
  const std::string text = describe_devices();
  EXPECT_FALSE(text.empty());
  if (cuda_device_count() == 0) {
    EXPECT_TRUE(text.find("no usable device") != std::string::npos ||
                text.find("without CUDA") != std::string::npos ||
                text.find("0 device") != std::string::npos)
        << text;
  }
}

}  // namespace
}  // namespace chunkflow::kernels
