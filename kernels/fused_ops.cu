// CUDA path of the fused element-wise ops (kernels/fused_ops.h): float32, bfloat16 and float16
// buffers, fp32 arithmetic, one rounding per stored value. Written for clarity first: plain loads,
// grid-stride loops, deterministic reductions (no atomics).
#include <cstdint>

#include "kernels/cuda_check.cuh"
#include "kernels/fused_ops.h"

namespace chunkflow::kernels {
namespace {

constexpr int kThreads = 256;  // a multiple of the warp size; block_sum relies on it
constexpr int64_t kMaxBlocks = int64_t{1} << 20;

cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

int blocks_for(int64_t work_items) {
  const int64_t blocks = (work_items + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

__device__ __forceinline__ float warp_sum(float value) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

// Sum of `value` over the block; every thread returns the same total (the warp sums are added in
// warp order by each thread, so the result is deterministic). shared: [32] floats. All threads of
// the block must call it.
__device__ float block_sum(float value, float* shared) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  value = warp_sum(value);
  __syncthreads();  // readers of the previous call's partials are done
  if (lane == 0) shared[warp] = value;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < warps; ++w) total += shared[w];
  return total;
}

// One block per row (grid-stride over rows).
template <typename T>
__global__ void rms_norm_forward_kernel(const T* x, const T* weight, T* out, float* rstd,
                                        int64_t rows, int64_t hidden, float eps) {
  __shared__ float shared[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* x_row = x + row * hidden;
    T* out_row = out + row * hidden;
    float squares = 0.0f;
    for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x) {
      const float value = to_float(x_row[j]);
      squares += value * value;
    }
    const float mean_square = block_sum(squares, shared) / static_cast<float>(hidden);
    // IEEE sqrt and division rather than rsqrtf's approximation: matches the CPU path.
    const float row_rstd = 1.0f / sqrtf(mean_square + eps);
    if (threadIdx.x == 0) rstd[row] = row_rstd;
    for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x) {
      // The normalized value is rounded to T before the weight multiplies (Hugging Face).
      const float normed = to_float(from_float<T>(to_float(x_row[j]) * row_rstd));
      out_row[j] = from_float<T>(to_float(weight[j]) * normed);
    }
  }
}

// Block b handles the rows of weight-gradient partial b; thread t owns columns t, t + blockDim,
// ... of workspace row b, so the partial sums need no atomics.
template <typename T>
__global__ void rms_norm_backward_kernel(const T* x, const T* weight, const float* rstd,
                                         const T* dout, T* dx, float* workspace, int64_t rows,
                                         int64_t hidden, int64_t partials) {
  __shared__ float shared[32];
  const int64_t block = blockIdx.x;
  float* partial = workspace + block * hidden;
  for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x) partial[j] = 0.0f;
  const int64_t row_end = (block + 1) * rows / partials;
  for (int64_t row = block * rows / partials; row < row_end; ++row) {
    const T* x_row = x + row * hidden;
    const T* dout_row = dout + row * hidden;
    T* dx_row = dx + row * hidden;
    const float row_rstd = rstd[row];
    float dot = 0.0f;
    for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x) {
      dot += to_float(dout_row[j]) * to_float(weight[j]) * to_float(x_row[j]);
    }
    dot = block_sum(dot, shared);
    const float correction = row_rstd * row_rstd * row_rstd * dot / static_cast<float>(hidden);
    for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x) {
      const float value = to_float(x_row[j]);
      const float gradient = to_float(dout_row[j]);
      dx_row[j] = from_float<T>(row_rstd * (gradient * to_float(weight[j])) - value * correction);
      partial[j] += gradient * to_float(from_float<T>(value * row_rstd));
    }
  }
}

// dweight[j] = sum of the partials in block order, rounded once.
template <typename T>
__global__ void rms_norm_weight_sum_kernel(const float* workspace, T* dweight, int64_t hidden,
                                           int64_t partials) {
  for (int64_t j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; j < hidden;
       j += int64_t{gridDim.x} * blockDim.x) {
    float total = 0.0f;
    for (int64_t block = 0; block < partials; ++block) total += workspace[block * hidden + j];
    dweight[j] = from_float<T>(total);
  }
}

// One thread per rotated pair (token, head, i < head_dim / 2).
template <typename T>
__global__ void rotary_kernel(const T* in, const int64_t* positions, const float* inv_freq, T* out,
                              int64_t tokens, int64_t heads, int64_t head_dim, float scaling,
                              float direction) {
  const int64_t half = head_dim / 2;
  const int64_t pairs = tokens * heads * half;
  for (int64_t pair = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; pair < pairs;
       pair += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = pair % half;
    const int64_t row = pair / half;  // token * heads + head
    const int64_t token = row / heads;
    // Hugging Face's fp32 tables: angle = position * inv_freq, cos and sin times the scaling.
    const float angle = static_cast<float>(positions[token]) * inv_freq[i];
    float sin_angle, cos_angle;
    sincosf(angle, &sin_angle, &cos_angle);
    cos_angle *= scaling;
    sin_angle = direction * (sin_angle * scaling);
    const T* in_row = in + row * head_dim;
    T* out_row = out + row * head_dim;
    const float first = to_float(in_row[i]), second = to_float(in_row[i + half]);
    out_row[i] = from_float<T>(first * cos_angle - second * sin_angle);
    out_row[i + half] = from_float<T>(second * cos_angle + first * sin_angle);
  }
}

template <typename T>
__global__ void swiglu_forward_kernel(const T* gate, const T* up, T* out, int64_t elements) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < elements;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float g = to_float(gate[i]);
    out[i] = from_float<T>(g / (1.0f + expf(-g)) * to_float(up[i]));
  }
}

template <typename T>
__global__ void swiglu_backward_kernel(const T* gate, const T* up, const T* dout, T* dgate, T* dup,
                                       int64_t elements) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < elements;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float g = to_float(gate[i]);
    const float e = expf(-g);
    const float s = 1.0f / (1.0f + e);
    const float gradient = to_float(dout[i]);
    dup[i] = from_float<T>(gradient * (g / (1.0f + e)));
    dgate[i] = from_float<T>(gradient * to_float(up[i]) * s * (1.0f + g * (1.0f - s)));
  }
}

}  // namespace

void rms_norm_forward_cuda(const RmsNormParams& params, void* stream) {
  check_params(params);
  if (params.rows == 0) return;
  const int grid = static_cast<int>(params.rows < kMaxBlocks ? params.rows : kMaxBlocks);
  dispatch_scalar_type(params.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    rms_norm_forward_kernel<T><<<grid, kThreads, 0, as_stream(stream)>>>(
        static_cast<const T*>(params.x), static_cast<const T*>(params.weight),
        static_cast<T*>(params.out), params.rstd, params.rows, params.hidden, params.eps);
    CF_CUDA_CHECK_LAUNCH(rms_norm_forward_kernel);
  });
}

void rms_norm_backward_cuda(const RmsNormBackwardParams& params, void* stream) {
  check_params(params);
  const int64_t partials = rms_norm_weight_partials(params.rows);
  dispatch_scalar_type(params.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (partials == 0) {
      // No rows: the weight gradient is zero (all-zero bits are 0.0 in every supported dtype).
      CF_CUDA_CHECK(cudaMemsetAsync(params.dweight, 0, sizeof(T) * static_cast<size_t>(params.hidden),
                                    as_stream(stream)));
      return;
    }
    rms_norm_backward_kernel<T><<<static_cast<int>(partials), kThreads, 0, as_stream(stream)>>>(
        static_cast<const T*>(params.x), static_cast<const T*>(params.weight), params.rstd,
        static_cast<const T*>(params.dout), static_cast<T*>(params.dx), params.dweight_workspace,
        params.rows, params.hidden, partials);
    CF_CUDA_CHECK_LAUNCH(rms_norm_backward_kernel);
    rms_norm_weight_sum_kernel<T><<<blocks_for(params.hidden), kThreads, 0, as_stream(stream)>>>(
        params.dweight_workspace, static_cast<T*>(params.dweight), params.hidden, partials);
    CF_CUDA_CHECK_LAUNCH(rms_norm_weight_sum_kernel);
  });
}

void rotary_cuda(const RotaryParams& params, void* stream) {
  check_params(params);
  const int64_t pairs = params.tokens * params.heads * (params.head_dim / 2);
  if (pairs == 0) return;
  dispatch_scalar_type(params.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    rotary_kernel<T><<<blocks_for(pairs), kThreads, 0, as_stream(stream)>>>(
        static_cast<const T*>(params.in), params.positions, params.inv_freq,
        static_cast<T*>(params.out), params.tokens, params.heads, params.head_dim,
        params.attention_scaling, params.inverse ? -1.0f : 1.0f);
    CF_CUDA_CHECK_LAUNCH(rotary_kernel);
  });
}

void swiglu_forward_cuda(const SwigluParams& params, void* stream) {
  check_params(params);
  if (params.elements == 0) return;
  dispatch_scalar_type(params.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    swiglu_forward_kernel<T><<<blocks_for(params.elements), kThreads, 0, as_stream(stream)>>>(
        static_cast<const T*>(params.gate), static_cast<const T*>(params.up),
        static_cast<T*>(params.out), params.elements);
    CF_CUDA_CHECK_LAUNCH(swiglu_forward_kernel);
  });
}

void swiglu_backward_cuda(const SwigluBackwardParams& params, void* stream) {
  check_params(params);
  if (params.elements == 0) return;
  dispatch_scalar_type(params.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    swiglu_backward_kernel<T><<<blocks_for(params.elements), kThreads, 0, as_stream(stream)>>>(
        static_cast<const T*>(params.gate), static_cast<const T*>(params.up),
        static_cast<const T*>(params.dout), static_cast<T*>(params.dgate),
        static_cast<T*>(params.dup), params.elements);
    CF_CUDA_CHECK_LAUNCH(swiglu_backward_kernel);
  });
}

}  // namespace chunkflow::kernels
