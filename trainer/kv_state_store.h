// K/V state of one split sequence while its dependent chunks run: per finished chunk (piece) and
// layer, the post-RoPE keys and values (detached), and the gradient accumulators that later
// chunks' backwards add into. Freed when the sequence's last chunk has run its backward.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "models/transformer.h"

namespace chunkflow::trainer {

class KVStateStore {
 public:
  explicit KVStateStore(int64_t layers) : layers_(layers) {}

  // Stores piece `pieces()`'s own K/V (one LayerKV per layer, [rows, kv_heads, head_dim]) as
  // detached tensors and zeroed gradient accumulators of the same shapes.
  void append(const std::vector<models::LayerKV>& own_kv);
  int64_t pieces() const { return static_cast<int64_t>(rows_.size()); }

  // Leaves for piece `piece`'s prefix: per layer, the concatenated K/V of pieces [0, piece),
  // [prefix rows, kv_heads, head_dim], requiring grad so the chunk's backward yields their
  // gradients. Empty for piece 0.
  std::vector<models::LayerKV> prefix_leaves(int64_t piece) const;

  // Adds the gradients that a backward left in `leaves` (from prefix_leaves(piece)) into the
  // accumulators of pieces [0, piece).
  void add_prefix_gradients(int64_t piece, const std::vector<models::LayerKV>& leaves);

  // The accumulated gradient of piece `piece`'s own K/V: complete once every later piece of the
  // sequence has run its backward.
  const std::vector<models::LayerKV>& gradients(int64_t piece) const;

  // Bytes held: K/V plus accumulators.
  int64_t bytes() const;
  void clear();

 private:
  int64_t layers_;
  std::vector<int64_t> rows_;                             // [pieces]
  std::vector<std::vector<models::LayerKV>> kv_;          // [pieces][layers]
  std::vector<std::vector<models::LayerKV>> gradients_;   // [pieces][layers]
};

}  // namespace chunkflow::trainer
