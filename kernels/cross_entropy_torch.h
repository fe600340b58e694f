// Torch adapter for the tiled cross-entropy (kernels/tiled_cross_entropy.h): checks tensors, turns
// them into params and wires the kernel into autograd. The loss head of the models calls this.
#pragma once

#include <torch/types.h>

#include <cstdint>

namespace chunkflow::kernels {

// Summed token cross-entropy of logits = hidden @ weight^T, computed in token tiles so that fp32
// logits exist for at most tile_tokens x vocab at a time, in the forward and in the backward
// (which recomputes each tile's logits from hidden, weight and the saved per-token lse).
//   hidden      [tokens, hidden_size] float32, CPU (flatten [batch, seq, hidden] with view first)
//   weight      [vocab, hidden_size]  float32, CPU (the LM head, or the tied embedding)
//   labels      [tokens] int64 or int32 (converted), CPU; each in [0, vocab) or kIgnoreIndex (-100)
//   tile_tokens > 0, tokens per tile
// Returns a 0-dim float32 tensor: the sum over labelled tokens of -log softmax(logits)[label],
// 0 when no token is labelled. It is deliberately not averaged: the trainer divides once by the
// loss-token count of the whole optimizer step (design section 6).
// Differentiable w.r.t. hidden and weight (either may be frozen); the backward honours the
// incoming gradient's scale. Not twice differentiable.
// Throws core::Error for wrong ranks, shapes, dtypes or devices (CUDA tensors: that path comes
// later), and for a label outside [0, vocab) that is not -100, naming the token index.
torch::Tensor tiled_cross_entropy_sum(const torch::Tensor& hidden, const torch::Tensor& weight,
                                      const torch::Tensor& labels, int64_t tile_tokens = 1024);

// Number of labels that are not kIgnoreIndex: the count the summed loss is divided by (after
// summing it over micro-steps and ranks). labels: any shape, int64 or int32, any device.
int64_t count_labelled_tokens(const torch::Tensor& labels);

}  // namespace chunkflow::kernels
