// Device queries through the CUDA runtime; failures that mean "no GPU here" map to 0 devices.
#include <cuda_runtime.h>

#include <string>

#include "core/error.h"
#include "core/strings.h"
#include "kernels/device.h"

namespace chunkflow::kernels {

int cuda_device_count() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later runtime calls are not poisoned
    return 0;
  }
  return count;
}

bool built_with_cuda() { return true; }

std::string describe_devices() {
  int runtime_version = 0;
  cudaRuntimeGetVersion(&runtime_version);
  const std::string runtime = core::str_cat("CUDA ", runtime_version / 1000, ".",
                                            (runtime_version % 1000) / 10, " runtime");
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();
    return runtime + ", no usable device (" + cudaGetErrorString(status) + ")";
  }
  std::string text = core::str_cat(runtime, ", ", count, " device(s)");
  for (int device = 0; device < count; ++device) {
    cudaDeviceProp properties{};
    if (cudaGetDeviceProperties(&properties, device) != cudaSuccess) continue;
    text += core::str_cat(device == 0 ? ": " : "; ", properties.name, " (sm_", properties.major,
                          properties.minor, ", ",
                          core::format_bytes(static_cast<double>(properties.totalGlobalMem)), ")");
  }
  return text;
}

}  // namespace chunkflow::kernels
