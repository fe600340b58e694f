// Fused element-wise ops of the decoder layer: RMSNorm, rotary position embedding with per-token
// positions, and SwiGLU (silu(gate) * up), forward and backward. Plain params structs and host
// launchers; compiles without nvcc or torch.
//
// Every launcher reads and writes contiguous row-major buffers of `dtype` elements and does its
// arithmetic in fp32 (loads convert to fp32, stores round once). The CPU launchers take float32
// only and run on host memory; the CUDA launchers take float32, bfloat16 and float16 device memory
// and run asynchronously on `stream` (a cudaStream_t; nullptr = the legacy default stream). The
// CUDA launchers exist only in builds compiled with CHUNKFLOW_WITH_CUDA: call them from code under
// `#ifdef CHUNKFLOW_WITH_CUDA`.
#pragma once

#include <cstdint>

#include "kernels/varlen_attention.h"  // ScalarType

namespace chunkflow::kernels {

// ---------------------------------------------------------------------------------------------
// RMSNorm, Hugging Face Llama arithmetic:
//   rstd[r] = 1 / sqrt(mean_j(x[r, j]^2) + eps)               fp32
//   out[r, j] = weight[j] * round_to_dtype(x[r, j] * rstd[r])  (the normalized value is rounded to
//                                                               dtype before the weight multiplies)
struct RmsNormParams {
  const void* x = nullptr;       // [rows, hidden], dtype
  const void* weight = nullptr;  // [hidden], dtype
  void* out = nullptr;           // [rows, hidden], dtype (written)
  float* rstd = nullptr;         // [rows] fp32 (written): saved for the backward
  int64_t rows = 0, hidden = 0;
  float eps = 1e-6f;
  ScalarType dtype = ScalarType::kFloat32;
};

// The gradient of RmsNormParams' out with respect to x and weight (written, not accumulated):
//   g = dout * weight,  dx[r, :] = rstd * g - x * rstd^3 * mean_j(g * x[r, j])
//   dweight[j] = sum_r dout[r, j] * round_to_dtype(x[r, j] * rstd[r])
// The weight gradient is summed in fp32: each of rms_norm_weight_partials(rows) row blocks writes
// its own partial sum to one row of `dweight_workspace`, then the partials are added in block
// order, so the result does not depend on the thread count or on timing.
struct RmsNormBackwardParams {
  const void* x = nullptr;       // [rows, hidden], dtype (the forward input)
  const void* weight = nullptr;  // [hidden], dtype
  const float* rstd = nullptr;   // [rows] fp32, from the forward
  const void* dout = nullptr;    // [rows, hidden], dtype
  void* dx = nullptr;            // [rows, hidden], dtype (written)
  void* dweight = nullptr;       // [hidden], dtype (written)
  float* dweight_workspace = nullptr;  // [rms_norm_weight_partials(rows), hidden] fp32 scratch
  int64_t rows = 0, hidden = 0;
  ScalarType dtype = ScalarType::kFloat32;
};

// Number n of row blocks whose weight-gradient partials RmsNormBackwardParams::dweight_workspace
// holds: min(rows, 256) (0 for no rows: dweight is then zeros and the workspace unused). Block b
// covers rows [b * rows / n, (b + 1) * rows / n).
int64_t rms_norm_weight_partials(int64_t rows);

// ---------------------------------------------------------------------------------------------
// Rotary position embedding (Hugging Face's rotate-half convention) with a position per token:
//   inv_freq[i]  the table of rope_frequencies.h (1 / theta^(2i / head_dim) without scaling)
//   angle[t, i] = float(positions[t]) * inv_freq[i]                 fp32 (Hugging Face's tables)
//   c = cos(angle) * attention_scaling, s = sin(angle) * attention_scaling   fp32
//   out[t, h, i]        = in[t, h, i] * c - in[t, h, i + half] * s
//   out[t, h, i + half] = in[t, h, i + half] * c + in[t, h, i] * s
// `inverse` rotates by -angle instead (same scaling). The map is a scaled rotation, so its
// backward is the inverse rotation with the same scaling: the gradient launch passes dout as
// `in`, dx as `out` and inverse = true.
struct RotaryParams {
  const void* in = nullptr;            // [tokens, heads, head_dim], dtype
  const int64_t* positions = nullptr;  // [tokens], on the same device as `in`
  const float* inv_freq = nullptr;     // [head_dim / 2] fp32, on the same device as `in`
  void* out = nullptr;                 // [tokens, heads, head_dim], dtype (written; may equal `in`)
  int64_t tokens = 0, heads = 0, head_dim = 0;  // head_dim even
  float attention_scaling = 1.0f;      // multiplies cos and sin (yarn's attention factor), > 0
  bool inverse = false;
  ScalarType dtype = ScalarType::kFloat32;
};

// ---------------------------------------------------------------------------------------------
// SwiGLU's gated product, element-wise: out = silu(gate) * up, silu(g) = g * sigmoid(g).
struct SwigluParams {
  const void* gate = nullptr;  // [elements], dtype
  const void* up = nullptr;    // [elements], dtype
  void* out = nullptr;         // [elements], dtype (written)
  int64_t elements = 0;
  ScalarType dtype = ScalarType::kFloat32;
};

// dgate = dout * up * sigmoid(gate) * (1 + gate * (1 - sigmoid(gate))),  dup = dout * silu(gate)
// (written, not accumulated).
struct SwigluBackwardParams {
  const void* gate = nullptr;  // [elements], dtype
  const void* up = nullptr;    // [elements], dtype
  const void* dout = nullptr;  // [elements], dtype
  void* dgate = nullptr;       // [elements], dtype (written)
  void* dup = nullptr;         // [elements], dtype (written)
  int64_t elements = 0;
  ScalarType dtype = ScalarType::kFloat32;
};

// Throw core::Error quoting the broken rule: a null pointer (allowed only when its op has nothing
// to do), a negative size, hidden or head_dim 0 with rows, an odd head_dim, eps < 0, a scaling <= 0,
// an unknown dtype. Called by every launcher.
void check_params(const RmsNormParams& params);
void check_params(const RmsNormBackwardParams& params);
void check_params(const RotaryParams& params);
void check_params(const SwigluParams& params);
void check_params(const SwigluBackwardParams& params);

// CPU launchers: float32 host buffers, multi-threaded over rows (element blocks for SwiGLU).
// A dtype other than kFloat32 throws.
void rms_norm_forward_cpu(const RmsNormParams& params);
void rms_norm_backward_cpu(const RmsNormBackwardParams& params);
void rotary_cpu(const RotaryParams& params);
void swiglu_forward_cpu(const SwigluParams& params);
void swiglu_backward_cpu(const SwigluBackwardParams& params);

// CUDA launchers: device buffers, float32/bfloat16/float16, asynchronous on `stream`
// (cudaStream_t). Defined only when built with CHUNKFLOW_WITH_CUDA.
void rms_norm_forward_cuda(const RmsNormParams& params, void* stream);
void rms_norm_backward_cuda(const RmsNormBackwardParams& params, void* stream);
void rotary_cuda(const RotaryParams& params, void* stream);
void swiglu_forward_cuda(const SwigluParams& params, void* stream);
void swiglu_backward_cuda(const SwigluBackwardParams& params, void* stream);

}  // namespace chunkflow::kernels
