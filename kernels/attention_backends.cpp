// Attention backends: choosing one (parse / resolve), LibTorch's FlashAttention-2 varlen entry
// points, and the composite of plain tensor ops. See attention_torch.h and attention_backends.h.
#include "kernels/attention_backends.h"

#include <ATen/ops/_flash_attention_backward.h>
#include <ATen/ops/_flash_attention_forward.h>
#include <torch/autograd.h>
#include <torch/torch.h>

#include <limits>
#include <vector>

#include "core/error.h"
#include "core/strings.h"

namespace chunkflow::kernels {
namespace {

constexpr const char* kKey = "model.attention_backend";

bool is_half_precision(torch::ScalarType dtype) { return dtype == torch::kBFloat16 || dtype == torch::kHalf; }

// FlashAttention-2 through ATen. Forward keeps what the backward entry point needs: inputs,
// output, log-sum-exp and the (unused, dropout-free) RNG state.
class FlashAttentionFunction : public torch::autograd::Function<FlashAttentionFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* context, const torch::Tensor& q,
                               const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& cu_seqlens_q,
                               const torch::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k,
                               double softmax_scale) {
    context->saved_data["max_seqlen_q"] = max_seqlen_q;
    context->saved_data["max_seqlen_k"] = max_seqlen_k;
    context->saved_data["softmax_scale"] = softmax_scale;
    // No query, or no key at all: FlashAttention is not asked (the contract's answer is zeros).
    if (q.size(0) == 0 || k.size(0) == 0 || max_seqlen_q == 0) {
      context->saved_data["empty"] = true;
      context->save_for_backward({q, k, v});
      return torch::zeros_like(q);
    }
    context->saved_data["empty"] = false;
    auto [out, lse, rng_state, unused, debug_mask] = at::_flash_attention_forward(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, /*dropout_p=*/0.0, /*is_causal=*/true,
        /*return_debug_mask=*/false, softmax_scale);
    context->save_for_backward({q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, rng_state, unused});
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* context,
                                                 torch::autograd::variable_list output_gradients) {
    const auto saved = context->get_saved_variables();
    const torch::autograd::variable_list no_gradient(5);
    if (context->saved_data["empty"].toBool()) {
      torch::autograd::variable_list gradients = {torch::zeros_like(saved[0]), torch::zeros_like(saved[1]),
                                                  torch::zeros_like(saved[2])};
      gradients.insert(gradients.end(), no_gradient.begin(), no_gradient.end());
      return gradients;
    }
    auto [dq, dk, dv] = at::_flash_attention_backward(
        output_gradients[0].to(saved[3].scalar_type()).contiguous(), saved[0], saved[1], saved[2], saved[3], saved[4],
        saved[5], saved[6], context->saved_data["max_seqlen_q"].toInt(), context->saved_data["max_seqlen_k"].toInt(),
        /*dropout_p=*/0.0, /*is_causal=*/true, saved[7], saved[8], context->saved_data["softmax_scale"].toDouble());
    torch::autograd::variable_list gradients = {dq, dk, dv};
    gradients.insert(gradients.end(), no_gradient.begin(), no_gradient.end());
    return gradients;
  }
};

}  // namespace

torch::Tensor offsets_on_device(const torch::Tensor& device_copy, const torch::Tensor& host, const torch::Device& device) {
  if (device_copy.defined() && device_copy.device() == device) return device_copy;
  return host.to(device, torch::kInt32);
}

AttentionBackend parse_attention_backend(const std::string& name) {
  if (name == "auto") return AttentionBackend::kAuto;
  if (name == "chunkflow") return AttentionBackend::kChunkflow;
  if (name == "flash") return AttentionBackend::kFlash;
  if (name == "composite") return AttentionBackend::kComposite;
  CF_FAIL(kKey, " = \"", name, "\" is not a backend; choose auto, chunkflow, flash or composite");
}

std::string attention_backend_name(AttentionBackend backend) {
  switch (backend) {
    case AttentionBackend::kAuto: return "auto";
    case AttentionBackend::kChunkflow: return "chunkflow";
    case AttentionBackend::kFlash: return "flash";
    case AttentionBackend::kComposite: return "composite";
  }
  CF_FAIL("unknown attention backend ", static_cast<int>(backend));
}

AttentionBackend resolve_attention_backend(AttentionBackend requested, const torch::Device& device,
                                           torch::ScalarType dtype, int64_t head_dim) {
  const bool cuda = device.is_cuda();
  const bool half = is_half_precision(dtype);
  const bool flash_head = head_dim > 0 && head_dim <= 256 && head_dim % 8 == 0;
  const bool ours_head = head_dim == 64 || head_dim == 128;
  if (requested == AttentionBackend::kAuto) {
    if (!cuda) return AttentionBackend::kChunkflow;
    if (!half) return AttentionBackend::kComposite;
    if (flash_head) return AttentionBackend::kFlash;
    if (ours_head) return AttentionBackend::kChunkflow;
    return AttentionBackend::kComposite;
  }
  const std::string the_case =
      core::str_cat(device.str(), " ", c10::toString(dtype), " with head_dim ", head_dim);
  switch (requested) {
    case AttentionBackend::kChunkflow:
      CF_CHECK(!cuda || (half && ours_head), kKey, " = chunkflow cannot run ", the_case,
               ": on CUDA our kernel takes bfloat16/float16 with head_dim 64 or 128 (use flash, or composite for "
               "float32)");
      break;
    case AttentionBackend::kFlash:
      CF_CHECK(cuda && half && flash_head, kKey, " = flash cannot run ", the_case,
               ": FlashAttention-2 runs on CUDA in bfloat16/float16 with head_dim a multiple of 8 up to 256 (use "
               "auto)");
      break;
    default: break;
  }
  return requested;
}

torch::Tensor flash_varlen_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                     const VarlenOffsets& offsets, double softmax_scale) {
  return FlashAttentionFunction::apply(q.contiguous(), k.contiguous(), v.contiguous(),
                                       offsets_on_device(offsets.device_cu_seqlens_q, offsets.cu_seqlens_q, q.device()),
                                       offsets_on_device(offsets.device_cu_seqlens_k, offsets.cu_seqlens_k, q.device()),
                                       offsets.max_seqlen_q, offsets.max_seqlen_k, softmax_scale);
}

torch::Tensor composite_varlen_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                         const VarlenOffsets& offsets, double softmax_scale) {
  const torch::ScalarType math = torch::promote_types(q.scalar_type(), torch::kFloat);
  const int64_t group = q.size(1) / k.size(1);
  const torch::Tensor starts_q = offsets.cu_seqlens_q.to(torch::kCPU, torch::kInt64).contiguous();
  const torch::Tensor starts_k = offsets.cu_seqlens_k.to(torch::kCPU, torch::kInt64).contiguous();
  const int64_t* cu_q = starts_q.data_ptr<int64_t>();
  const int64_t* cu_k = starts_k.data_ptr<int64_t>();
  const auto index_options = torch::TensorOptions().dtype(torch::kInt64).device(q.device());
  std::vector<torch::Tensor> outputs;
  for (int64_t segment = 0; segment + 1 < starts_q.size(0); ++segment) {
    const int64_t sq = cu_q[segment + 1] - cu_q[segment], sk = cu_k[segment + 1] - cu_k[segment];
    if (sq == 0) continue;
    const torch::Tensor queries = q.narrow(0, cu_q[segment], sq).to(math);
    if (sk == 0) {
      outputs.push_back(queries * 0);  // rows without keys: zeros, still in the graph of q
      continue;
    }
    const torch::Tensor keys = k.narrow(0, cu_k[segment], sk).to(math).repeat_interleave(group, 1);
    const torch::Tensor values = v.narrow(0, cu_k[segment], sk).to(math).repeat_interleave(group, 1);
    // Bottom-right causal: query row i sees key j iff j <= i + (sk - sq).
    const torch::Tensor visible = torch::arange(sk, index_options).unsqueeze(0) <=
                                  torch::arange(sq, index_options).unsqueeze(1) + (sk - sq);
    // A finite fill keeps rows without a visible key free of NaN (in values and in gradients);
    // they are zeroed after the softmax, as the contract says.
    const torch::Tensor scores =
        (torch::einsum("qhd,khd->hqk", {queries, keys}) * softmax_scale).masked_fill(visible.logical_not(), -1e30);
    const torch::Tensor sees_a_key = visible.any(1).view({1, sq, 1});
    const torch::Tensor probabilities = torch::where(sees_a_key, scores.softmax(-1), torch::zeros({}, scores.options()));
    outputs.push_back(torch::einsum("hqk,khd->qhd", {probabilities, values}));
  }
  // Always connected to k and v, even when no query reads a key, so that their backward runs (a
  // context-parallel K/V gather's backward is a collective every rank must reach).
  const torch::Tensor keys_in_graph = ((k.sum() + v.sum()) * 0).to(q.scalar_type());
  if (outputs.empty()) return torch::zeros_like(q) + keys_in_graph;
  return torch::cat(outputs, 0).to(q.scalar_type()) + keys_in_graph;
}

}  // namespace chunkflow::kernels
