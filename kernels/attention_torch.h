// Torch adapter for variable-length attention (kernels/varlen_attention.h): checks tensors, turns
// them into params, runs the launcher, and wires the backward into autograd. The only attention
// file that sees torch.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <tuple>

namespace chunkflow::kernels {

// Attention of one chunk, segment by segment, with the semantics of varlen_attention.h: segment b
// has queries q[cu_seqlens_q[b] .. cu_seqlens_q[b+1]) and keys/values (its prefix, then its own
// tokens) k/v[cu_seqlens_k[b] .. cu_seqlens_k[b+1]); causal is bottom-right aligned (row i sees
// key j iff j <= i + sk - sq); a row that sees no key outputs zeros. GQA: query head h uses K/V
// head h / (heads / kv_heads).
//
//   q            [total_q, heads, head_dim]     float32 on the CPU, or bfloat16/float16 on a
//                CUDA device (builds with CUDA; head_dim 64 or 128 there); made contiguous
//   k, v         [total_k, kv_heads, head_dim]  same dtype and device as q
//   cu_seqlens_q [segments + 1] int32, CPU (checked on the host; copied to the device for
//                CUDA tensors); starts at 0, non-decreasing, ends at total_q
//   cu_seqlens_k [segments + 1] int32, CPU; starts at 0, non-decreasing, ends at total_k
//   max_seqlen_q/k  >= every segment's query/key length
//   returns      [total_q, heads, head_dim], dtype and device of q
//
// Autograd-aware: the backward gives dq, dk and dv (every key row, prefix rows included: the
// caller routes the prefix part to the K/V state of earlier chunks). Throws core::Error naming
// the tensor and the rule on bad shapes, dtypes or offsets; bfloat16/float16 on the CPU and
// float32 on CUDA throw, naming the supported combination.
torch::Tensor varlen_attention(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const torch::Tensor& cu_seqlens_q,
                               const torch::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
                               int64_t max_seqlen_k, double softmax_scale, bool causal = true);

// The forward alone, without autograd: (out [total_q, heads, head_dim] in q.dtype(),
// lse [heads, total_q] float32, natural-log sum-exp of the scaled scores, -inf for rows that see
// no key). Same arguments and checks as varlen_attention.
std::tuple<torch::Tensor, torch::Tensor> varlen_attention_forward(
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
    const torch::Tensor& cu_seqlens_q, const torch::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
    int64_t max_seqlen_k, double softmax_scale, bool causal = true);

}  // namespace chunkflow::kernels
