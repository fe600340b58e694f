// Token cross-entropy fused with the output projection, computed in token tiles so fp32 logits
// exist for one tile at a time, never for a whole chunk x vocabulary. Plain params structs;
// compiles without nvcc or torch.
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

}  // namespace chunkflow::kernels
