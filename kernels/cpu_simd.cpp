// The out-of-line SIMD helpers of kernels/cpu_simd.h.
#include "kernels/cpu_simd.h"

namespace chunkflow::kernels::cpu_simd {

CF_SIMD_CLONES void exp_in_place(float* values, int64_t count) {
#pragma omp simd
  for (int64_t i = 0; i < count; ++i) values[i] = exp_simd(values[i]);
}

}  // namespace chunkflow::kernels::cpu_simd
