// Torch adapter for the tiled cross-entropy: tensor checks, params, and the autograd Function.
#include "kernels/cross_entropy_torch.h"

#include <torch/autograd.h>

#include "core/error.h"
#include "kernels/tiled_cross_entropy.h"

namespace chunkflow::kernels {
namespace {

constexpr const char* kWhat = "tiled_cross_entropy_sum";

void check_cpu(const torch::Tensor& tensor, const char* name) {
  CF_CHECK(tensor.defined(), kWhat, ": ", name, " is an undefined tensor");
  CF_CHECK(!tensor.is_cuda(), kWhat, ": ", name,
           " is a CUDA tensor; the CUDA path of the tiled cross-entropy comes later, "
           "use CPU tensors for now");
  CF_CHECK(tensor.device().is_cpu(), kWhat, ": ", name, " must be on the CPU, got ",
           tensor.device().str());
}

// Returns labels as contiguous int64, after checking rank, length and dtype.
torch::Tensor checked_labels(const torch::Tensor& labels, int64_t tokens) {
  check_cpu(labels, "labels");
  CF_CHECK(labels.dim() == 1 && labels.size(0) == tokens, kWhat,
           ": labels must be [tokens] with tokens = hidden.size(0) = ", tokens, ", got ",
           labels.sizes());
  CF_CHECK(labels.scalar_type() == torch::kInt64 || labels.scalar_type() == torch::kInt32, kWhat,
           ": labels must be int64 or int32, got ", labels.scalar_type());
  return labels.to(torch::kInt64).contiguous();
}

class TiledCrossEntropyFunction : public torch::autograd::Function<TiledCrossEntropyFunction> {
 public:
  // hidden [tokens, hidden_size], weight [vocab, hidden_size] fp32 contiguous; labels [tokens]
  // int64 contiguous, already checked by the caller.
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& hidden,
                               const torch::Tensor& weight, const torch::Tensor& labels,
                               int64_t tile_tokens) {
    const int64_t tokens = hidden.size(0);
    torch::Tensor loss_sum = torch::zeros({}, hidden.options());
    torch::Tensor lse = torch::empty({tokens}, hidden.options());

    TiledCrossEntropyParams params;
    params.hidden = hidden.const_data_ptr();
    params.weight = weight.const_data_ptr();
    params.labels = labels.const_data_ptr<int64_t>();
    params.loss_sum = loss_sum.mutable_data_ptr<float>();
    params.lse = lse.mutable_data_ptr<float>();
    params.tokens = tokens;
    params.hidden_size = hidden.size(1);
    params.vocab = weight.size(0);
    params.tile_tokens = tile_tokens;
    params.dtype = ScalarType::kFloat32;
    tiled_cross_entropy_forward_cpu(params);

    ctx->save_for_backward({hidden, weight, labels, lse});
    ctx->saved_data["tile_tokens"] = tile_tokens;
    return loss_sum;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const torch::Tensor& hidden = saved[0];
    const torch::Tensor& weight = saved[1];
    const torch::Tensor& labels = saved[2];
    const torch::Tensor& lse = saved[3];
    const bool need_hidden = ctx->needs_input_grad(0);
    const bool need_weight = ctx->needs_input_grad(1);
    const torch::Tensor& grad_output = grad_outputs[0];
    if ((!need_hidden && !need_weight) || !grad_output.defined()) {
      return {torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
    }
    CF_CHECK(grad_output.numel() == 1, kWhat, ": the gradient of the 0-dim loss must have one "
             "element, got ", grad_output.sizes());

    torch::Tensor d_hidden = torch::empty_like(hidden);
    // The kernel always writes d_weight; when the weight is frozen the result is dropped.
    torch::Tensor d_weight = torch::empty_like(weight);
    TiledCrossEntropyBackwardParams params;
    params.hidden = hidden.const_data_ptr();
    params.weight = weight.const_data_ptr();
    params.labels = labels.const_data_ptr<int64_t>();
    params.lse = lse.const_data_ptr<float>();
    params.grad_loss = grad_output.item<float>();
    params.d_hidden = d_hidden.mutable_data_ptr();
    params.d_weight = d_weight.mutable_data_ptr();
    params.tokens = hidden.size(0);
    params.hidden_size = hidden.size(1);
    params.vocab = weight.size(0);
    params.tile_tokens = ctx->saved_data["tile_tokens"].toInt();
    params.dtype = ScalarType::kFloat32;
    tiled_cross_entropy_backward_cpu(params);

    return {need_hidden ? d_hidden : torch::Tensor(), need_weight ? d_weight : torch::Tensor(),
            torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor tiled_cross_entropy_sum(const torch::Tensor& hidden, const torch::Tensor& weight,
                                      const torch::Tensor& labels, int64_t tile_tokens) {
  check_cpu(hidden, "hidden");
  check_cpu(weight, "weight");
  CF_CHECK(hidden.dim() == 2, kWhat, ": hidden must be [tokens, hidden_size], got ",
           hidden.sizes(), "; flatten batch and sequence first (hidden.view({-1, hidden_size}))");
  CF_CHECK(weight.dim() == 2, kWhat, ": weight must be [vocab, hidden_size], got ",
           weight.sizes());
  CF_CHECK(hidden.size(1) == weight.size(1), kWhat, ": hidden_size differs between hidden ",
           hidden.sizes(), " and weight ", weight.sizes());
  CF_CHECK(weight.size(0) > 0, kWhat, ": weight must have vocab > 0 rows, got ", weight.sizes());
  CF_CHECK(hidden.scalar_type() == torch::kFloat32 && weight.scalar_type() == torch::kFloat32,
           kWhat, ": the CPU path supports float32 only, got hidden ", hidden.scalar_type(),
           " and weight ", weight.scalar_type(), "; convert with .to(torch::kFloat32)");
  CF_CHECK(tile_tokens > 0, kWhat, ": tile_tokens must be > 0, got ", tile_tokens);
  const torch::Tensor labels64 = checked_labels(labels, hidden.size(0));
  return TiledCrossEntropyFunction::apply(hidden.contiguous(), weight.contiguous(), labels64,
                                          tile_tokens);
}

int64_t count_labelled_tokens(const torch::Tensor& labels) {
  CF_CHECK(labels.defined(), "count_labelled_tokens: labels is an undefined tensor");
  CF_CHECK(labels.scalar_type() == torch::kInt64 || labels.scalar_type() == torch::kInt32,
           "count_labelled_tokens: labels must be int64 or int32, got ", labels.scalar_type());
  return labels.ne(kIgnoreIndex).sum().item<int64_t>();
}

}  // namespace chunkflow::kernels
