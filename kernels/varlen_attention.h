// Variable-length attention with a K/V prefix per segment (design brief section 5): one call per
// layer per chunk, no mask tensors. Plain params structs; compiles without nvcc or torch.
//
// Layout: a chunk holds `segments` segments back to back. Segment b has
//   queries  q[cu_seqlens_q[b] .. cu_seqlens_q[b+1])                      (sq_b rows)
//   keys     k[cu_seqlens_k[b] .. cu_seqlens_k[b+1]), same rows of v       (sk_b rows)
// where a segment's keys are its prefix (K/V state of earlier chunks of the same sequence)
// followed by its own tokens, so usually sk_b = prefix_b + sq_b. Segments never see each other.
// Causal masking is bottom-right aligned (FlashAttention's varlen causal rule): query row i of a
// segment may attend key j iff j <= i + (sk_b - sq_b). A query row that sees no key (sk_b < sq_b
// and i < sq_b - sk_b, or sk_b == 0) outputs zeros with lse = -inf. GQA: query head h uses K/V
// head h / (heads / kv_heads).
#pragma once

#include <cstdint>

namespace chunkflow::kernels {

enum class ScalarType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// "float32", "bfloat16", "float16" (for messages); "unknown" for any other value.
inline const char* scalar_type_name(ScalarType dtype) {
  switch (dtype) {
    case ScalarType::kFloat32: return "float32";
    case ScalarType::kBFloat16: return "bfloat16";
    case ScalarType::kFloat16: return "float16";
  }
  return "unknown";
}

struct VarlenAttentionParams {
  const void* q = nullptr;  // [total_q, heads, head_dim], contiguous, dtype
  const void* k = nullptr;  // [total_k, kv_heads, head_dim], contiguous, dtype
  const void* v = nullptr;  // [total_k, kv_heads, head_dim], contiguous, dtype
  const int32_t* cu_seqlens_q = nullptr;  // [segments + 1], host memory for the CPU path
  const int32_t* cu_seqlens_k = nullptr;  // [segments + 1]
  void* out = nullptr;      // [total_q, heads, head_dim], dtype (written)
  float* lse = nullptr;     // [heads, total_q], fp32 natural-log sum-exp of the scaled scores (written)
  int segments = 0, heads = 0, kv_heads = 0, head_dim = 0;
  int max_seqlen_q = 0, max_seqlen_k = 0;
  float softmax_scale = 1.0f;  // usually 1 / sqrt(head_dim)
  bool causal = true;          // bottom-right aligned; false = full attention within a segment
  ScalarType dtype = ScalarType::kFloat32;
};

struct VarlenAttentionBackwardParams {
  // Forward inputs and results, as in VarlenAttentionParams.
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* out = nullptr;
  const float* lse = nullptr;
  const void* dout = nullptr;  // [total_q, heads, head_dim]
  const int32_t* cu_seqlens_q = nullptr;
  const int32_t* cu_seqlens_k = nullptr;
  // Gradients (written, not accumulated). dk/dv cover every key row, prefix rows included: the
  // scheduler routes the prefix part to the K/V state of the earlier chunks.
  void* dq = nullptr;  // [total_q, heads, head_dim]
  void* dk = nullptr;  // [total_k, kv_heads, head_dim]
  void* dv = nullptr;  // [total_k, kv_heads, head_dim]
  int segments = 0, heads = 0, kv_heads = 0, head_dim = 0;
  int max_seqlen_q = 0, max_seqlen_k = 0;
  float softmax_scale = 1.0f;
  bool causal = true;
  ScalarType dtype = ScalarType::kFloat32;
  // CUDA workspace, allocated by the caller (the CPU path ignores both):
  float* dq_accum = nullptr;   // [total_q, heads, head_dim] fp32; zeroed and filled by the launcher
  float* softmax_d = nullptr;  // [heads, total_q] fp32; rowsum(dout * out), filled by the launcher
};

// Where cu_seqlens_q/k live: the CPU path reads them on the host; the CUDA kernels read device
// copies, which check_params cannot inspect (the adapter checks the host copy first).
enum class OffsetsIn { kHostMemory, kDeviceMemory };

// Throws core::Error quoting the broken rule when params are inconsistent (null pointers, heads
// not a multiple of kv_heads, cu_seqlens not non-decreasing from 0, a segment longer than
// max_seqlen_*, ...). Called by every launcher.
void check_params(const VarlenAttentionParams& params, OffsetsIn offsets = OffsetsIn::kHostMemory);
void check_params(const VarlenAttentionBackwardParams& params,
                  OffsetsIn offsets = OffsetsIn::kHostMemory);

// CPU path: fp32 accumulation; computes only the key range each query tile can see (masked tiles
// are skipped), multi-threaded over (segment, kv head).
void varlen_attention_forward_cpu(const VarlenAttentionParams& params);
void varlen_attention_backward_cpu(const VarlenAttentionBackwardParams& params);

// CUDA path (defined only in builds with CHUNKFLOW_WITH_CUDA), FlashAttention-2 style: tiles of
// 64 queries x 64 keys on tensor cores (mma.sync m16n8k16), online softmax in registers, no score
// matrix in memory; masked key tiles are skipped. Every pointer, cu_seqlens included, is device
// memory on the device of `stream` (a cudaStream_t); q/k/v/out/dout 16-byte aligned.
// dtype bfloat16 or float16 (fp32 accumulation), head_dim 64 or 128; other combinations throw.
// The forward writes out and lse. The backward computes softmax_d, accumulates dq in dq_accum
// with fp32 atomics (the only order-dependent sum: dq is not bitwise repeatable), then writes
// dq, and dk/dv per key tile without atomics (a block owns a key tile and loops over the GQA
// group's query heads). Asynchronous on `stream`; launch errors throw.
void varlen_attention_forward_cuda(const VarlenAttentionParams& params, void* stream);
void varlen_attention_backward_cuda(const VarlenAttentionBackwardParams& params, void* stream);

}  // namespace chunkflow::kernels
