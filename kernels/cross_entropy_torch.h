// Torch adapter for the tiled cross-entropy (kernels/tiled_cross_entropy.h): checks tensors, turns
// them into params and wires the kernel into autograd. The loss head of the models calls this.
#pragma once

#include <torch/types.h>

#include <cstdint>

namespace chunkflow::kernels {

// Summed token cross-entropy of logits = hidden @ weight^T, computed in token tiles so that fp32
// logits exist for at most tile_tokens x vocab at a time, in the forward and in the backward
// (which recomputes each tile's logits from hidden, weight and the saved per-token lse).
//   hidden      [tokens, hidden_size] (flatten [batch, seq, hidden] with view first)
//   weight      [vocab, hidden_size] (the LM head, or the tied embedding), on hidden's device
//               One dtype for both: float32, bfloat16 or float16 (on the CPU the last two are
//               widened to float32 first; CUDA builds take all three natively); logits, lse and
//               loss are fp32 whatever the dtype.
//   labels      [tokens] int64 or int32 (converted); each in [0, vocab) or kIgnoreIndex (-100).
//               CPU path: on the CPU. CUDA path: anywhere, moved to hidden's device.
//   tile_tokens > 0, tokens per tile
// Returns a 0-dim float32 tensor on hidden's device: the sum over labelled tokens of
// -log softmax(logits)[label], 0 when no token is labelled, summed in a fixed order (the same on
// every run). It is deliberately not averaged: the trainer divides once by the loss-token count
// of the whole optimizer step (design section 6).
// Differentiable w.r.t. hidden and weight (either may be frozen); gradients have the inputs'
// dtype, and the backward honours the incoming gradient's scale. Not twice differentiable.
// CUDA: runs on the current stream of hidden's device. Checking the labels copies one value to
// the host (a synchronisation), unless labels_checked says the caller has already checked them
// (the trainer checks token ids on the host as it reads them); the backward reads the incoming
// gradient's scale on the device.
// Throws core::Error for wrong ranks, shapes, dtypes or devices (CUDA tensors in a build without
// CUDA kernels), and for a label outside [0, vocab) that is not -100, naming the token index.
torch::Tensor tiled_cross_entropy_sum(const torch::Tensor& hidden, const torch::Tensor& weight,
                                      const torch::Tensor& labels, int64_t tile_tokens = 1024,
                                      bool labels_checked = false);

// Number of labels that are not kIgnoreIndex: the count the summed loss is divided by (after
// summing it over micro-steps and ranks). labels: any shape, int64 or int32, any device.
int64_t count_labelled_tokens(const torch::Tensor& labels);

}  // namespace chunkflow::kernels
