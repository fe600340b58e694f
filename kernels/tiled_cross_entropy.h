// Token cross-entropy fused with the output projection, computed in token tiles so fp32 logits
// exist for one tile at a time, never for a whole chunk x vocabulary. Plain params structs, a CPU
// path (fp32) and a CUDA path (fp32, bf16, fp16); compiles without nvcc or torch.
#pragma once

#include <cstdint>

#include "kernels/varlen_attention.h"  // ScalarType

namespace chunkflow::kernels {

// Ignored label (Hugging Face's ignore index): such tokens add nothing to the loss.
inline constexpr int64_t kIgnoreIndex = -100;

struct TiledCrossEntropyParams {
  const void* hidden = nullptr;   // [tokens, hidden_size], contiguous, dtype
  const void* weight = nullptr;   // [vocab, hidden_size], contiguous, dtype (the LM head)
  const int64_t* labels = nullptr;  // [tokens], in [0, vocab) or kIgnoreIndex
  float* loss_sum = nullptr;      // [1] (written): sum over labelled tokens of -log softmax(logits)[label]
  float* lse = nullptr;           // [tokens] (written): logsumexp of each token's logits; 0 for ignored
  int64_t tokens = 0, hidden_size = 0, vocab = 0;
  int64_t tile_tokens = 1024;     // tokens per tile: bounds the fp32 logits buffer to tile x vocab
  ScalarType dtype = ScalarType::kFloat32;
};

struct TiledCrossEntropyBackwardParams {
  const void* hidden = nullptr;
  const void* weight = nullptr;
  const int64_t* labels = nullptr;
  const float* lse = nullptr;     // from the forward
  float grad_loss = 1.0f;         // d(objective) / d(loss_sum)
  // CUDA only: when set, the kernels read d(objective) / d(loss_sum) from this device float
  // instead of grad_loss, so the caller need not copy it to the host (a synchronisation).
  const float* grad_loss_on_device = nullptr;
  void* d_hidden = nullptr;       // [tokens, hidden_size] (written)
  void* d_weight = nullptr;       // [vocab, hidden_size] (written, not accumulated)
  int64_t tokens = 0, hidden_size = 0, vocab = 0;
  int64_t tile_tokens = 1024;
  ScalarType dtype = ScalarType::kFloat32;
};

// Throws core::Error quoting the broken rule (null pointers, sizes, a label outside [0, vocab)
// that is not kIgnoreIndex, naming the token).
void check_params(const TiledCrossEntropyParams& params);
void check_params(const TiledCrossEntropyBackwardParams& params);

void tiled_cross_entropy_forward_cpu(const TiledCrossEntropyParams& params);
void tiled_cross_entropy_backward_cpu(const TiledCrossEntropyBackwardParams& params);

// ---- CUDA path ---------------------------------------------------------------------------------
// Same contract as the CPU path for float32, bfloat16 and float16 inputs, with every pointer of
// the params (labels and lse included) and of the workspace in device memory of the current
// device. Per token tile, one cuBLAS GEMM (fp32 compute, fp32 output) writes the tile's logits
// into the workspace; the loss, lse and gradients are computed from those fp32 logits. All work
// is queued on `stream` (a cudaStream_t; nullptr is the legacy default stream) and the launchers
// return without synchronising. cuBLAS runs through one handle per (host thread, device),
// created on first use. Label values are not read on the host: the caller checks them (the torch
// adapter does, naming the token); a label outside [0, vocab) that is not kIgnoreIndex makes its
// token's loss and gradient row NaN instead of reading out of bounds. Sizes and pointers are
// checked on the host (core::Error); cuBLAS and CUDA failures throw core::Error naming the call,
// file:line and the library's status. Only CUDA builds (CHUNKFLOW_WITH_CUDA) define these.

// Device memory the forward needs besides its params; tile = min(tile_tokens, tokens).
struct TiledCrossEntropyForwardWorkspace {
  float* logits = nullptr;      // [tile, vocab] fp32: one tile's logits
  float* token_loss = nullptr;  // [tokens] fp32: each token's loss (0 if ignored), summed at the
                                // end in a fixed order (no float atomics): the same on every run
};

// Device memory the backward needs besides its params; tile = min(tile_tokens, tokens).
struct TiledCrossEntropyBackwardWorkspace {
  float* logits = nullptr;       // [tile, vocab] fp32: one tile's logits, recomputed
  void* grad_logits = nullptr;   // [tile, vocab] dtype: (softmax - onehot) * grad_loss of the tile;
                                 // unused for float32 (written over `logits` in place)
  float* d_weight_fp32 = nullptr;  // [vocab, hidden_size] fp32: d_weight summed over tiles, then
                                   // rounded once to dtype; unused for float32 (d_weight itself)
};

// Writes params.loss_sum and params.lse (both device memory).
void tiled_cross_entropy_forward_cuda(const TiledCrossEntropyParams& params,
                                      const TiledCrossEntropyForwardWorkspace& workspace,
                                      void* stream);
// Writes params.d_hidden and params.d_weight (dtype); params.lse comes from the forward.
void tiled_cross_entropy_backward_cuda(const TiledCrossEntropyBackwardParams& params,
                                       const TiledCrossEntropyBackwardWorkspace& workspace,
                                       void* stream);

}  // namespace chunkflow::kernels
