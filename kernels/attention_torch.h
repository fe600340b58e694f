// Torch adapter for variable-length attention (kernels/varlen_attention.h): checks tensors, turns
// them into params, runs the launcher, and wires the backward into autograd. The only attention
// file that sees torch.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <tuple>

namespace chunkflow::kernels {

// Which implementation runs a varlen attention call (model.attention_backend). Every backend
// keeps the contract below; they differ in where they run and how fast.
enum class AttentionBackend {
  kAuto,       // resolve_attention_backend picks one per device and dtype
  kChunkflow,  // ours (kernels/varlen_attention.h): CPU (float32 math for every float dtype), or
               // CUDA bf16/fp16 with head_dim 64 or 128
  kFlash,      // LibTorch's bundled FlashAttention-2 varlen entry points: CUDA bf16/fp16, head_dim
               // a multiple of 8 up to 256
  kComposite,  // plain tensor ops segment by segment, float32 math: any device and float dtype;
               // holds [heads, sq, sk] scores per segment, so for tests and float32 on CUDA
};

// "auto" | "chunkflow" | "flash" | "composite"; throws core::Error naming model.attention_backend.
AttentionBackend parse_attention_backend(const std::string& name);
std::string attention_backend_name(AttentionBackend backend);

// The backend that runs q of `device` / `dtype` / `head_dim`. kAuto picks the fastest that
// supports the case: flash on CUDA in bf16/fp16 (2.3x ours on an H200, docs/kernels.md),
// composite on CUDA in float32 (no fused kernel there takes float32), chunkflow on the CPU. An
// explicit backend that cannot run the case throws core::Error naming model.attention_backend,
// the value, the case and what the backend supports.
AttentionBackend resolve_attention_backend(AttentionBackend requested, const torch::Device& device,
                                           torch::ScalarType dtype, int64_t head_dim);

// The offsets of one varlen call. The host copies are the contract (checked on the host); the
// device copies, when defined, are the same values already on q's CUDA device (copied once per
// chunk by models::make_chunk_batch), which spares the CUDA backends a blocking copy per call.
struct VarlenOffsets {
  torch::Tensor cu_seqlens_q, cu_seqlens_k;                // [segments + 1] int32, CPU
  torch::Tensor device_cu_seqlens_q, device_cu_seqlens_k;  // same on q's device, or undefined
  int64_t max_seqlen_q = 0, max_seqlen_k = 0;
};

// varlen_attention (below) on `backend` (kAuto: resolve_attention_backend). Causal, bottom-right.
torch::Tensor varlen_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const VarlenOffsets& offsets, double softmax_scale,
                               AttentionBackend backend = AttentionBackend::kAuto);

// Attention of one chunk, segment by segment, with the semantics of varlen_attention.h: segment b
// has queries q[cu_seqlens_q[b] .. cu_seqlens_q[b+1]) and keys/values (its prefix, then its own
// tokens) k/v[cu_seqlens_k[b] .. cu_seqlens_k[b+1]); causal is bottom-right aligned (row i sees
// key j iff j <= i + sk - sq); a row that sees no key outputs zeros. GQA: query head h uses K/V
// head h / (heads / kv_heads).
//
//   q            [total_q, heads, head_dim]     float32 on the CPU (bfloat16/float16 are computed
//                in float32 there and the results rounded back), or bfloat16/float16 on a CUDA
//                device (builds with CUDA; head_dim 64 or 128 there); made contiguous
//   k, v         [total_k, kv_heads, head_dim]  same dtype and device as q
//   cu_seqlens_q [segments + 1] int32, CPU (checked on the host; copied to the device for
//                CUDA tensors); starts at 0, non-decreasing, ends at total_q
//   cu_seqlens_k [segments + 1] int32, CPU; starts at 0, non-decreasing, ends at total_k
//   max_seqlen_q/k  >= every segment's query/key length
//   returns      [total_q, heads, head_dim], dtype and device of q
//
// Autograd-aware: the backward gives dq, dk and dv (every key row, prefix rows included: the
// caller routes the prefix part to the K/V state of earlier chunks). Throws core::Error naming
// the tensor and the rule on bad shapes, dtypes or offsets; float32 on CUDA throws, naming the
// supported combination. This is the chunkflow backend; the overload above chooses one.
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
