// CUDA helpers shared by the .cu files of kernels/: the runtime check macro and the element
// types behind ScalarType. nvcc-only; public headers never include it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "core/error.h"
#include "kernels/varlen_attention.h"  // ScalarType

// CF_CUDA_CHECK(call): throws core::Error naming the call, file:line and CUDA's own message.
#define CF_CUDA_CHECK(call)                                                                   \
  do {                                                                                        \
    const cudaError_t cf_cuda_status = (call);                                                \
    if (cf_cuda_status != cudaSuccess)                                                        \
      CF_FAIL("CUDA error in ", #call, " at ", __FILE__, ":", __LINE__, ": ",                 \
              cudaGetErrorName(cf_cuda_status), " (", cudaGetErrorString(cf_cuda_status), ")"); \
  } while (false)

// After a kernel launch: launch-configuration errors surface here, not at the next sync.
#define CF_CUDA_CHECK_LAUNCH(kernel_name) CF_CUDA_CHECK(cudaPeekAtLastError())

namespace chunkflow::kernels {

// Element type of each ScalarType; fp32 conversions at load/store.
template <ScalarType>
struct CudaElement;
template <>
struct CudaElement<ScalarType::kFloat32> {
  using type = float;
};
template <>
struct CudaElement<ScalarType::kBFloat16> {
  using type = __nv_bfloat16;
};
template <>
struct CudaElement<ScalarType::kFloat16> {
  using type = __half;
};

__device__ __forceinline__ float to_float(float value) { return value; }
__device__ __forceinline__ float to_float(__nv_bfloat16 value) { return __bfloat162float(value); }
__device__ __forceinline__ float to_float(__half value) { return __half2float(value); }

template <typename T>
__device__ __forceinline__ T from_float(float value);
template <>
__device__ __forceinline__ float from_float<float>(float value) { return value; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float value) {
  return __float2bfloat16(value);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float value) { return __float2half(value); }

// dispatch_scalar_type(dtype, [&](auto tag) { using T = typename decltype(tag)::type; ... })
template <typename Body>
void dispatch_scalar_type(ScalarType dtype, Body&& body) {
  switch (dtype) {
    case ScalarType::kFloat32: body(CudaElement<ScalarType::kFloat32>{}); return;
    case ScalarType::kBFloat16: body(CudaElement<ScalarType::kBFloat16>{}); return;
    case ScalarType::kFloat16: body(CudaElement<ScalarType::kFloat16>{}); return;
  }
  CF_FAIL("unknown ScalarType(", static_cast<int>(dtype), ")");
}

}  // namespace chunkflow::kernels
