// Torch adapter for the tiled cross-entropy: tensor checks, params (and the CUDA path's workspace),
// and the autograd Function.
#include "kernels/cross_entropy_torch.h"

#include <torch/autograd.h>

#include <algorithm>

#include "core/error.h"
#include "kernels/tiled_cross_entropy.h"

#ifdef CHUNKFLOW_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace chunkflow::kernels {
namespace {

constexpr const char* kWhat = "tiled_cross_entropy_sum";

// hidden and weight: the CPU, or (in CUDA builds) a CUDA device.
void check_device(const torch::Tensor& tensor, const char* name) {
  CF_CHECK(tensor.defined(), kWhat, ": ", name, " is an undefined tensor");
#ifdef CHUNKFLOW_WITH_CUDA
  CF_CHECK(tensor.device().is_cpu() || tensor.is_cuda(), kWhat, ": ", name,
           " must be on the CPU or a CUDA device, got ", tensor.device().str());
#else
  CF_CHECK(!tensor.is_cuda(), kWhat, ": ", name, " is a CUDA tensor (", tensor.device().str(),
           ") but this build has no CUDA kernels (nvcc was not found at configure time); use CPU "
           "tensors or rebuild with CUDA");
  CF_CHECK(tensor.device().is_cpu(), kWhat, ": ", name, " must be on the CPU, got ",
           tensor.device().str());
#endif
}

ScalarType kernel_dtype(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat32: return ScalarType::kFloat32;
    case torch::kBFloat16: return ScalarType::kBFloat16;
    case torch::kFloat16: return ScalarType::kFloat16;
    default: break;
  }
  CF_FAIL(kWhat, ": hidden and weight must be float32, bfloat16 or float16 on CUDA, got ", dtype);
}

// Returns labels as contiguous int64 on `device`, after checking rank, length and dtype. The CPU
// path needs them on the CPU; the CUDA path takes them from anywhere and moves them.
torch::Tensor checked_labels(const torch::Tensor& labels, int64_t tokens, torch::Device device) {
  CF_CHECK(labels.defined(), kWhat, ": labels is an undefined tensor");
  if (device.is_cpu()) {
    CF_CHECK(labels.device().is_cpu(), kWhat, ": labels must be on the CPU like hidden, got ",
             labels.device().str());
  }
  CF_CHECK(labels.dim() == 1 && labels.size(0) == tokens, kWhat,
           ": labels must be [tokens] with tokens = hidden.size(0) = ", tokens, ", got ",
           labels.sizes());
  CF_CHECK(labels.scalar_type() == torch::kInt64 || labels.scalar_type() == torch::kInt32, kWhat,
           ": labels must be int64 or int32, got ", labels.scalar_type());
  return labels.to(device, torch::kInt64).contiguous();
}

#ifdef CHUNKFLOW_WITH_CUDA
// The CUDA kernels cannot throw, so label values are checked here with one device-to-host copy
// (the CPU launcher checks them itself). The message matches the CPU path's.
void check_label_values(const torch::Tensor& labels, int64_t vocab) {
  const torch::Tensor outside =
      labels.ne(kIgnoreIndex).logical_and(labels.lt(0).logical_or(labels.ge(vocab)));
  if (!outside.any().item<bool>()) return;
  const int64_t token = outside.nonzero()[0][0].item<int64_t>();
  CF_FAIL(kWhat, ": labels[", token, "] = ", labels[token].item<int64_t>(),
          " is outside [0, vocab = ", vocab, ") and is not the ignore index ", kIgnoreIndex);
}

cudaStream_t current_stream(const torch::Tensor& tensor) {
  return c10::cuda::getCurrentCUDAStream(tensor.device().index()).stream();
}

// Workspace from torch's caching allocator: freed when these return, and reused only by work
// queued after the kernels on the same stream.
void forward_cuda(const TiledCrossEntropyParams& params, const torch::Tensor& hidden) {
  const c10::cuda::CUDAGuard device_guard(hidden.device());
  const auto fp32 = hidden.options().dtype(torch::kFloat32);
  torch::Tensor logits =
      torch::empty({std::min(params.tile_tokens, params.tokens), params.vocab}, fp32);
  torch::Tensor token_loss = torch::empty({params.tokens}, fp32);
  TiledCrossEntropyForwardWorkspace workspace;
  workspace.logits = logits.mutable_data_ptr<float>();
  workspace.token_loss = token_loss.mutable_data_ptr<float>();
  tiled_cross_entropy_forward_cuda(params, workspace, current_stream(hidden));
}

void backward_cuda(const TiledCrossEntropyBackwardParams& params, const torch::Tensor& hidden) {
  const c10::cuda::CUDAGuard device_guard(hidden.device());
  const auto fp32 = hidden.options().dtype(torch::kFloat32);
  const int64_t tile_tokens = std::min(params.tile_tokens, params.tokens);
  torch::Tensor logits = torch::empty({tile_tokens, params.vocab}, fp32);
  // float32 needs neither a separate grad_logits nor d_weight_fp32 (see the workspace struct).
  torch::Tensor grad_logits, d_weight_fp32;
  TiledCrossEntropyBackwardWorkspace workspace;
  workspace.logits = logits.mutable_data_ptr<float>();
  if (params.dtype != ScalarType::kFloat32) {
    grad_logits = torch::empty({tile_tokens, params.vocab}, hidden.options());
    d_weight_fp32 = torch::empty({params.vocab, params.hidden_size}, fp32);
    workspace.grad_logits = grad_logits.mutable_data_ptr();
    workspace.d_weight_fp32 = d_weight_fp32.mutable_data_ptr<float>();
  }
  tiled_cross_entropy_backward_cuda(params, workspace, current_stream(hidden));
}
#endif

class TiledCrossEntropyFunction : public torch::autograd::Function<TiledCrossEntropyFunction> {
 public:
  // hidden [tokens, hidden_size], weight [vocab, hidden_size] contiguous, on one device, of one
  // supported dtype; labels [tokens] int64 contiguous on that device, already checked by the
  // caller.
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& hidden,
                               const torch::Tensor& weight, const torch::Tensor& labels,
                               int64_t tile_tokens) {
    const int64_t tokens = hidden.size(0), vocab = weight.size(0);
    const auto fp32 = hidden.options().dtype(torch::kFloat32);
    torch::Tensor loss_sum = torch::zeros({}, fp32);
    torch::Tensor lse = torch::empty({tokens}, fp32);

    TiledCrossEntropyParams params;
    params.hidden = hidden.const_data_ptr();
    params.weight = weight.const_data_ptr();
    params.labels = labels.const_data_ptr<int64_t>();
    params.loss_sum = loss_sum.mutable_data_ptr<float>();
    params.lse = lse.mutable_data_ptr<float>();
    params.tokens = tokens;
    params.hidden_size = hidden.size(1);
    params.vocab = vocab;
    params.tile_tokens = tile_tokens;
    params.dtype = kernel_dtype(hidden.scalar_type());
    if (hidden.is_cuda()) {
#ifdef CHUNKFLOW_WITH_CUDA
      forward_cuda(params, hidden);
#else
      CF_ASSERT(false, "a CUDA tensor passed check_device in a build without CUDA kernels");
#endif
    } else {
      tiled_cross_entropy_forward_cpu(params);
    }

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
    // On CUDA the kernels read the scale on the device: no host synchronisation per backward.
    const torch::Tensor grad_loss = grad_output.to(hidden.device(), torch::kFloat).contiguous();
    if (hidden.is_cuda()) {
      params.grad_loss_on_device = grad_loss.const_data_ptr<float>();
    } else {
      params.grad_loss = grad_loss.item<float>();
    }
    params.d_hidden = d_hidden.mutable_data_ptr();
    params.d_weight = d_weight.mutable_data_ptr();
    params.tokens = hidden.size(0);
    params.hidden_size = hidden.size(1);
    params.vocab = weight.size(0);
    params.tile_tokens = ctx->saved_data["tile_tokens"].toInt();
    params.dtype = kernel_dtype(hidden.scalar_type());
    if (hidden.is_cuda()) {
#ifdef CHUNKFLOW_WITH_CUDA
      backward_cuda(params, hidden);
#else
      CF_ASSERT(false, "a CUDA tensor passed check_device in a build without CUDA kernels");
#endif
    } else {
      tiled_cross_entropy_backward_cpu(params);
    }

    return {need_hidden ? d_hidden : torch::Tensor(), need_weight ? d_weight : torch::Tensor(),
            torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor tiled_cross_entropy_sum(const torch::Tensor& hidden, const torch::Tensor& weight,
                                      const torch::Tensor& labels, int64_t tile_tokens, bool labels_checked) {
  check_device(hidden, "hidden");
  check_device(weight, "weight");
  CF_CHECK(hidden.device() == weight.device(), kWhat,
           ": hidden and weight must be on one device, got ", hidden.device().str(), " and ",
           weight.device().str());
  CF_CHECK(hidden.dim() == 2, kWhat, ": hidden must be [tokens, hidden_size], got ",
           hidden.sizes(), "; flatten batch and sequence first (hidden.view({-1, hidden_size}))");
  CF_CHECK(weight.dim() == 2, kWhat, ": weight must be [vocab, hidden_size], got ",
           weight.sizes());
  CF_CHECK(hidden.size(1) == weight.size(1), kWhat, ": hidden_size differs between hidden ",
           hidden.sizes(), " and weight ", weight.sizes());
  CF_CHECK(weight.size(0) > 0, kWhat, ": weight must have vocab > 0 rows, got ", weight.sizes());
  if (hidden.is_cuda()) {
    CF_CHECK(hidden.scalar_type() == weight.scalar_type(), kWhat,
             ": hidden and weight must share a dtype, got hidden ", hidden.scalar_type(),
             " and weight ", weight.scalar_type());
    kernel_dtype(hidden.scalar_type());  // throws for any other dtype
  } else {
    const auto low_precision = [](torch::ScalarType dtype) {
      return dtype == torch::kBFloat16 || dtype == torch::kFloat16;
    };
    if (hidden.scalar_type() == weight.scalar_type() && low_precision(hidden.scalar_type())) {
      // The CPU kernel computes in float32, as the CUDA kernel accumulates: widen the inputs and
      // let autograd round the gradients back to their dtype.
      return tiled_cross_entropy_sum(hidden.to(torch::kFloat32), weight.to(torch::kFloat32), labels, tile_tokens,
                                     labels_checked);
    }
    CF_CHECK(hidden.scalar_type() == torch::kFloat32 && weight.scalar_type() == torch::kFloat32,
             kWhat, ": the CPU path takes float32 (or bfloat16/float16 for both, computed in float32), got hidden ",
             hidden.scalar_type(), " and weight ", weight.scalar_type(), "; convert with .to(torch::kFloat32)");
  }
  CF_CHECK(tile_tokens > 0, kWhat, ": tile_tokens must be > 0, got ", tile_tokens);
  const torch::Tensor device_labels = checked_labels(labels, hidden.size(0), hidden.device());
#ifdef CHUNKFLOW_WITH_CUDA
  if (hidden.is_cuda() && !labels_checked) check_label_values(device_labels, weight.size(0));
#else
  (void)labels_checked;  // the CPU launcher checks every label itself, at no extra cost
#endif
  return TiledCrossEntropyFunction::apply(hidden.contiguous(), weight.contiguous(), device_labels,
                                          tile_tokens);
}

int64_t count_labelled_tokens(const torch::Tensor& labels) {
  CF_CHECK(labels.defined(), "count_labelled_tokens: labels is an undefined tensor");
  CF_CHECK(labels.scalar_type() == torch::kInt64 || labels.scalar_type() == torch::kInt32,
           "count_labelled_tokens: labels must be int64 or int32, got ", labels.scalar_type());
  return labels.ne(kIgnoreIndex).sum().item<int64_t>();
}

}  // namespace chunkflow::kernels
