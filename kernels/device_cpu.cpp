// Device queries for builds without CUDA.
#include "kernels/device.h"

namespace chunkflow::kernels {

int cuda_device_count() { return 0; }
bool built_with_cuda() { return false; }
std::string describe_devices() { return "built without CUDA; CPU only"; }

}  // namespace chunkflow::kernels
