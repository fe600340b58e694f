// Which accelerators this process can use. Compiles without nvcc; the CUDA build answers from the
// runtime, the CPU build always answers 0.
#pragma once

#include <string>

namespace chunkflow::kernels {

// Number of usable CUDA devices. A missing or too-old driver (cudaErrorInsufficientDriver,
// cudaErrorNoDevice) counts as 0, never as an error: build machines have the toolkit, not a GPU.
int cuda_device_count();

// Whether this binary was compiled with the CUDA kernels.
bool built_with_cuda();

// One line for logs: "CUDA 13.0 runtime, 1 device(s): NVIDIA H200 (sm_90, 139.8 GiB)" or why none.
std::string describe_devices();

}  // namespace chunkflow::kernels
