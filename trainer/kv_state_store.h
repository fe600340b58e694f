// K/V state of one split sequence while its dependent chunks run. Per layer, one contiguous
// buffer holds the post-RoPE keys (and one the values) of every chunk of the sequence at the
// chunk's row offset, and one buffer of the same shape accumulates their gradients. A chunk's
// prefix is then a view of the buffers, never a copy: the model writes each chunk's own K/V into
// its rows and attends to rows [0, prefix + chunk tokens); the backward adds the prefix gradient
// straight into the accumulator rows. Freed when the sequence's last backward has run.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "models/transformer.h"

namespace chunkflow::trainer {

class KVStateStore {
 public:
  // rows: capacity, at least the sequence's pieces x chunk_size (the last chunk's packed
  // neighbours are written after its piece); state_options: dtype/device of K and V (the
  // activations'); gradient_options: of their gradient accumulators (float32 under mixed
  // precision, so that many later chunks' contributions add up without bf16 rounding).
  KVStateStore(int64_t layers, int64_t rows, int64_t kv_heads, int64_t head_dim, torch::TensorOptions state_options,
               torch::TensorOptions gradient_options);

  // The per-layer prefix handles for a chunk whose split piece starts at row `prefix_rows`.
  std::vector<models::KVPrefix> prefix(int64_t prefix_rows);

  // Gradient accumulated for rows [first_row, first_row + rows) of every layer's K and V: what
  // later chunks sent back to the chunk that owns those rows. Complete once every later chunk has
  // run its backward. Views of the accumulators.
  std::vector<models::LayerKV> gradients(int64_t first_row, int64_t rows);

  // Bytes held: K/V plus accumulators.
  int64_t bytes() const;

 private:
  std::vector<models::KVPrefix> layers_;
};

}  // namespace chunkflow::trainer
