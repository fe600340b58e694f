// Tensor parallelism inside the decoder (Megatron-LM's scheme): tp ranks each hold a slice of
// every layer's weights and compute their heads and their part of the MLP; two sums over the
// group per layer put the pieces together.
//
//   x (whole, every rank) -> f -> q/k/v: this rank's heads (column-parallel: rows of the weight)
//                               -> attention on those heads -> o_proj (row-parallel: columns)
//                               -> g (sum over the group) -> + bias -> residual
//   the MLP alike: f -> gate/up (columns of the MLP) -> swiglu -> down (rows) -> g
//   embedding: rows of the vocabulary (a token outside this rank's rows looks up zeros) -> g
//   LM head: rows of the vocabulary; the loss combines every rank's per-token log-sum-exp and
//   target logit (vocab_parallel_loss_sum), so no rank ever holds a whole vocabulary of logits.
//
// f is the identity forward and sums the gradient over the group backward; g sums forward and is
// the identity backward. Norms, biases added after g and everything between layers are replicated:
// every tp rank computes them alike. The models library knows no communicator: parallel/
// (tensor_parallel_group) supplies the collectives as functions.
//
// Sequence parallelism (Megatron-LM's, on top): between the split blocks the residual stream is
// split by rows (tokens, sequence_rows) over the tp ranks, so norms, residual adds and the
// activations they keep cost 1/tp. f becomes an all-gather of the rows (gather_rows; backward: the
// gradient reduce-scattered) and g a reduce-scatter (scatter_rows; backward: an all-gather): the
// same bytes as the all-reduce they replace. Parameters every rank holds whole (norms, o_proj's
// bias) then get a partial gradient from their rows on each rank, summed over the group by the
// trainer (trainer::reduce_gradients).
//
//   rows of the chunk: | rank 0 | rank 1 |  -> norm (own rows) -> gather_rows -> q/k/v ... o_proj
//                      -> scatter_rows -> + bias -> residual (own rows) -> ... final norm
//                      -> gather_rows -> vocabulary-parallel loss
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "configs/model_config.h"

namespace chunkflow::models {

struct TensorParallel {
  int rank = 0;
  int size = 1;
  // Differentiable, collective over the tp group (see the file comment).
  std::function<torch::Tensor(const torch::Tensor&)> copy_to_group;  // f
  std::function<torch::Tensor(const torch::Tensor&)> sum_over_group;  // g
  // Not differentiable, collective: the elementwise sum / max over the group, in place.
  std::function<void(torch::Tensor&)> all_reduce_sum, all_reduce_max;
  // Sequence parallelism (see the file comment); only with size > 1. Differentiable, collective:
  // gather_rows: this rank's rows [sequence_rows(total_rows).count, ...] -> all rows [total_rows, ...];
  // scatter_rows: every rank's partial sums of all rows -> this rank's rows of their sum.
  bool sequence_parallel = false;
  std::function<torch::Tensor(const torch::Tensor&, int64_t total_rows)> gather_rows;
  std::function<torch::Tensor(const torch::Tensor&)> scatter_rows;
  bool active() const { return size > 1; }
  bool splits_rows() const { return size > 1 && sequence_parallel; }
};

// The rows [begin, begin + count) of `total_rows` that tp rank `rank` of `size` holds under
// sequence parallelism: as equal as possible, the first ranks taking one more.
struct RowRange {
  int64_t begin = 0, count = 0;
};
RowRange sequence_rows(int64_t total_rows, int rank, int size);

// How the parameter called `name` (Hugging Face naming) is split over tp ranks: 0 = its rows
// (column-parallel projections, the vocabulary of embeddings and LM head, q/k/v biases), 1 = its
// columns (row-parallel o_proj and down_proj), -1 = replicated (norms, o_proj's bias).
int tensor_parallel_dim(const std::string& name);

// Rank `rank`'s slice of `whole` (the parameter `name` of the whole model), contiguous.
torch::Tensor tensor_parallel_slice(const torch::Tensor& whole, const std::string& name, int rank, int size);
// The whole model's shape of parameter `name` whose slice on each of `size` ranks has `local` shape.
std::vector<int64_t> tensor_parallel_whole_shape(std::vector<int64_t> local, const std::string& name, int size);

// Throws core::Error naming parallel.tp and the model key when `size` ranks cannot split the model:
// num_attention_heads, num_key_value_heads, intermediate_size and vocab_size must be multiples of it.
void check_tensor_parallel(const configs::ModelConfig& config, int size);

// The summed token cross-entropy of hidden [tokens, hidden] against labels [tokens] (-100
// ignored) with the LM head split by vocabulary rows: `weight` [vocab / size, hidden] holds rows
// [rank x vocab / size, ...). Each rank computes its rows' logits in token tiles (fp32, at most
// tile_tokens x vocab / size at a time, recomputed in the backward), the per-token log-sum-exp is
// combined over the group and the target logit comes from the rank that holds it. Returns the same
// 0-dim float32 sum on every rank. Differentiable w.r.t. hidden (this rank's part of the gradient:
// pass hidden through tp.copy_to_group first) and weight.
torch::Tensor vocab_parallel_loss_sum(const torch::Tensor& hidden, const torch::Tensor& weight,
                                      const torch::Tensor& labels, const TensorParallel& tp, int64_t tile_tokens);

}  // namespace chunkflow::models
