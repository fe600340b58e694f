// Tensor-parallel slicing rules and the vocabulary-parallel loss; see tensor_parallel.h.
#include "models/tensor_parallel.h"

#include <vector>

#include "core/error.h"
#include "kernels/tiled_cross_entropy.h"

namespace chunkflow::models {
namespace {

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Autograd node of vocab_parallel_loss_sum. Forward and backward walk the tokens in tiles and
// recompute each tile's logits, so fp32 logits exist for one tile of this rank's vocabulary rows
// at a time; only the per-token log-sum-exp over the whole vocabulary is kept.
class VocabParallelLoss : public torch::autograd::Function<VocabParallelLoss> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* context, const torch::Tensor& hidden,
                               const torch::Tensor& weight, const torch::Tensor& labels, const TensorParallel* tp,
                               int64_t tile_tokens) {
    const int64_t tokens = hidden.size(0), rows = weight.size(0);
    const torch::Tensor device_labels = labels.to(hidden.device(), torch::kLong);
    const torch::Tensor local_labels = device_labels - rows * tp->rank;
    const torch::Tensor held = local_labels.ge(0).logical_and(local_labels.lt(rows));
    const torch::Tensor gather_index = local_labels.clamp(0, rows - 1).unsqueeze(1);
    const auto fp32 = hidden.options().dtype(torch::kFloat);
    torch::Tensor lse = torch::empty({tokens}, fp32), target = torch::zeros({tokens}, fp32);
    const torch::Tensor weight32 = weight.to(torch::kFloat);
    for (int64_t begin = 0; begin < tokens; begin += tile_tokens) {
      const int64_t count = std::min(tile_tokens, tokens - begin);
      const torch::Tensor logits = hidden.narrow(0, begin, count).to(torch::kFloat).matmul(weight32.t());
      lse.narrow(0, begin, count).copy_(logits.logsumexp(1));
      target.narrow(0, begin, count)
          .copy_(logits.gather(1, gather_index.narrow(0, begin, count)).squeeze(1) * held.narrow(0, begin, count));
    }
    // log-sum-exp over every rank's rows: max, then the sum of the shifted exponentials.
    if (tp->active()) {
      torch::Tensor largest = lse.clone();
      tp->all_reduce_max(largest);
      torch::Tensor shifted = (lse - largest).exp();
      tp->all_reduce_sum(shifted);
      lse = largest + shifted.log();
      tp->all_reduce_sum(target);
    }
    const torch::Tensor labelled = device_labels.ne(kernels::kIgnoreIndex);
    context->save_for_backward({hidden, weight, local_labels, held, labelled, lse});
    context->saved_data["tile_tokens"] = tile_tokens;
    return ((lse - target) * labelled).to(torch::kDouble).sum().to(torch::kFloat);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* context,
                                                 torch::autograd::variable_list output_gradients) {
    const auto saved = context->get_saved_variables();
    const torch::Tensor &hidden = saved[0], &weight = saved[1], &local_labels = saved[2], &held = saved[3];
    const torch::Tensor &labelled = saved[4], &lse = saved[5];
    const int64_t tile_tokens = context->saved_data["tile_tokens"].toInt();
    const int64_t tokens = hidden.size(0), rows = weight.size(0);
    const torch::Tensor scale = output_gradients[0].to(torch::kFloat);
    const torch::Tensor weight32 = weight.to(torch::kFloat);
    torch::Tensor d_hidden = torch::empty_like(hidden);
    torch::Tensor d_weight = torch::zeros_like(weight32);
    for (int64_t begin = 0; begin < tokens; begin += tile_tokens) {
      const int64_t count = std::min(tile_tokens, tokens - begin);
      const torch::Tensor tile = hidden.narrow(0, begin, count).to(torch::kFloat);
      // d loss / d logits = softmax over the whole vocabulary (this rank's columns of it) minus the
      // one-hot target where this rank holds it, for labelled tokens.
      torch::Tensor probabilities = (tile.matmul(weight32.t()) - lse.narrow(0, begin, count).unsqueeze(1)).exp();
      probabilities.mul_(labelled.narrow(0, begin, count).unsqueeze(1));
      const torch::Tensor one_hot =
          torch::zeros({count, rows}, probabilities.options())
              .scatter_(1, local_labels.narrow(0, begin, count).clamp(0, rows - 1).unsqueeze(1),
                        held.logical_and(labelled).narrow(0, begin, count).to(torch::kFloat).unsqueeze(1));
      const torch::Tensor d_logits = (probabilities - one_hot) * scale;
      d_hidden.narrow(0, begin, count).copy_(d_logits.matmul(weight32));
      d_weight.add_(d_logits.t().matmul(tile));
    }
    return {d_hidden, d_weight.to(weight.scalar_type()), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

RowRange sequence_rows(int64_t total_rows, int rank, int size) {
  const int64_t base = total_rows / size, extra = total_rows % size;
  return {rank * base + std::min<int64_t>(rank, extra), base + (rank < extra ? 1 : 0)};
}

int tensor_parallel_dim(const std::string& name) {
  for (const char* column_parallel : {"self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj.",
                                      "mlp.gate_proj.weight", "mlp.up_proj.weight"}) {
    if (name.find(column_parallel) != std::string::npos) return 0;
  }
  if (ends_with(name, "embed_tokens.weight") || ends_with(name, "lm_head.weight")) return 0;
  if (ends_with(name, "self_attn.o_proj.weight") || ends_with(name, "mlp.down_proj.weight")) return 1;
  return -1;
}

torch::Tensor tensor_parallel_slice(const torch::Tensor& whole, const std::string& name, int rank, int size) {
  const int dim = tensor_parallel_dim(name);
  if (dim < 0 || size == 1) return whole.contiguous();
  CF_CHECK(whole.size(dim) % size == 0, "tensor parallelism: ", name, " has ", whole.size(dim), " along dimension ",
           dim, ", not a multiple of parallel.tp = ", size);
  const int64_t part = whole.size(dim) / size;
  return whole.narrow(dim, part * rank, part).contiguous();
}

std::vector<int64_t> tensor_parallel_whole_shape(std::vector<int64_t> local, const std::string& name, int size) {
  const int dim = tensor_parallel_dim(name);
  if (dim >= 0) local[static_cast<size_t>(dim)] *= size;
  return local;
}

void check_tensor_parallel(const configs::ModelConfig& config, int size) {
  CF_CHECK(size >= 1, "parallel.tp must be >= 1, got ", size);
  for (const auto& [key, value] : config.tensor_parallel_split_sizes()) {
    CF_CHECK(value % size == 0, "parallel.tp = ", size, " splits every layer's heads, MLP and the vocabulary over ",
             size, " ranks, but ", key, " = ", value, " is not a multiple of ", size,
             "; choose a parallel.tp that divides num_attention_heads, num_key_value_heads, intermediate_size and "
             "vocab_size");
  }
}

torch::Tensor vocab_parallel_loss_sum(const torch::Tensor& hidden, const torch::Tensor& weight,
                                      const torch::Tensor& labels, const TensorParallel& tp, int64_t tile_tokens) {
  CF_CHECK(hidden.dim() == 2 && weight.dim() == 2 && hidden.size(1) == weight.size(1) && labels.dim() == 1 &&
               labels.size(0) == hidden.size(0),
           "vocab_parallel_loss_sum: hidden ", hidden.sizes(), ", weight ", weight.sizes(), ", labels ", labels.sizes());
  CF_CHECK(tile_tokens > 0, "vocab_parallel_loss_sum: tile_tokens must be positive, got ", tile_tokens);
  return VocabParallelLoss::apply(hidden, weight, labels, &tp, tile_tokens);
}

}  // namespace chunkflow::models
