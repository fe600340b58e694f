// Torch adapters for the fused element-wise ops (kernels/fused_ops.h): check tensors, turn them
// into params, run the CPU or CUDA launcher and wire the backward into autograd. The decoder
// layer calls these for its norms, rotary embedding and MLP gate.
//
// Which path runs:
//   CPU tensors, all float32   the fused CPU launchers (multi-threaded, fp32).
//   CPU tensors, other dtypes  an equivalent composite of plain torch ops (autograd as usual),
//                              so float64 (and bfloat16/float16) still work, unfused.
//   CUDA tensors               the CUDA launchers on the current stream when the build has CUDA
//                              (float32, bfloat16, float16, fp32 arithmetic); a build without
//                              CUDA throws.
// The fused paths are differentiable once (their backward is not itself differentiable).
// Errors throw core::Error naming the tensor, its shape or dtype and the rule.
#pragma once

#include <torch/types.h>

#include "kernels/rope_frequencies.h"

namespace chunkflow::kernels {

// RMSNorm with Hugging Face Llama's arithmetic: weight * (x * rsqrt(mean(x^2, -1) + eps)), the
// normalization computed in fp32 (in x's dtype when wider) and rounded to x's dtype before the
// weight multiplies.
//   x       [..., hidden], float32/bfloat16/float16 (float64 on the CPU)
//   weight  [hidden], same dtype and device as x
//   eps     >= 0
//   returns [..., hidden], x's dtype. Gradients for x and weight.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// Rotary position embedding with a position per token (Hugging Face's rotate-half convention):
// pairs (i, i + head_dim / 2) of each head rotate by positions[t] * inv_freq[i], the angle
// computed in fp32 as Hugging Face's fp32 cos/sin tables are, cos and sin times
// attention_scaling (see fused_ops.h for the arithmetic, rope_frequencies.h for the table).
//   x         [tokens, heads, head_dim], head_dim even; float32/bfloat16/float16 (float64 on CPU)
//   positions [tokens] int64, same device as x (position within the original sequence)
//   inv_freq  [head_dim / 2] float32, same device as x (rope_inv_freq below)
//   attention_scaling  > 0 (1 except for yarn)
//   returns   [tokens, heads, head_dim], x's dtype. Gradient for x.
torch::Tensor apply_rotary(const torch::Tensor& x, const torch::Tensor& positions, const torch::Tensor& inv_freq,
                           double attention_scaling = 1.0);

// rope_frequencies(...).inv_freq as a float32 tensor on `device`.
torch::Tensor rope_inv_freq(const RopeFrequencies& frequencies, const torch::Device& device = torch::kCPU);

// SwiGLU's gated product silu(gate) * up, element-wise.
//   gate, up  same shape (any), dtype and device; float32/bfloat16/float16 (float64 on the CPU)
//   returns   gate's shape and dtype. Gradients for gate and up.
torch::Tensor swiglu(const torch::Tensor& gate, const torch::Tensor& up);

}  // namespace chunkflow::kernels
