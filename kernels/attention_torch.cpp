// Torch adapter for variable-length attention: tensor checks, tensors -> params, and the autograd
// Function whose backward calls the backward launcher.
#include "kernels/attention_torch.h"

#include <torch/autograd.h>

#include <limits>
#include <sstream>
#include <string>

#include "core/error.h"
#include "kernels/attention_backends.h"
#include "kernels/varlen_attention.h"

#ifdef CHUNKFLOW_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace chunkflow::kernels {
namespace {

constexpr const char* kOp = "varlen_attention";

std::string shape_of(const torch::Tensor& tensor) {
  std::ostringstream text;
  text << tensor.sizes();
  return text.str();
}

ScalarType scalar_type_of(const torch::Tensor& tensor) {
  switch (tensor.scalar_type()) {
    case torch::kFloat: return ScalarType::kFloat32;
    case torch::kBFloat16: return ScalarType::kBFloat16;
    case torch::kHalf: return ScalarType::kFloat16;
    default: break;
  }
  CF_FAIL(kOp, ": q must be float32, bfloat16 or float16, got ", tensor.scalar_type());
}

int to_int(int64_t value, const char* name) {
  CF_CHECK(value >= 0 && value <= std::numeric_limits<int>::max(), kOp, ": ", name,
           " must be in [0, INT_MAX], got ", value);
  return static_cast<int>(value);
}

void check_cu_seqlens(const torch::Tensor& cu_seqlens, const char* name, int64_t total,
                      const char* total_name) {
  CF_CHECK(cu_seqlens.defined(), kOp, ": ", name, " is undefined");
  CF_CHECK(cu_seqlens.device().is_cpu(), kOp, ": ", name,
           " must be a CPU tensor (the launcher reads the offsets on the host), got ",
           cu_seqlens.device());
  CF_CHECK(cu_seqlens.scalar_type() == torch::kInt, kOp, ": ", name, " must be int32, got ",
           cu_seqlens.scalar_type());
  CF_CHECK(cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 1, kOp, ": ", name,
           " must be [segments + 1] with at least one entry, got ", shape_of(cu_seqlens));
  const int64_t last = cu_seqlens[-1].item<int32_t>();
  CF_CHECK(last == total, kOp, ": ", name, "[-1] must equal ", total_name, " = ", total, ", got ",
           last);
}

// Tensors made contiguous and checked against each other; the params views point into them.
struct Inputs {
  torch::Tensor q, k, v, cu_seqlens_q, cu_seqlens_k;
  int segments = 0, heads = 0, kv_heads = 0, head_dim = 0, max_seqlen_q = 0, max_seqlen_k = 0;
  float softmax_scale = 1.0f;
  bool causal = true;
  ScalarType dtype = ScalarType::kFloat32;
};

Inputs check_inputs(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                    const torch::Tensor& cu_seqlens_q, const torch::Tensor& cu_seqlens_k,
                    int64_t max_seqlen_q, int64_t max_seqlen_k, double softmax_scale,
                    bool causal) {
  CF_CHECK(q.defined() && k.defined() && v.defined(), kOp, ": q, k and v must be defined");
  for (const auto* tensor : {&q, &k, &v}) {
#ifdef CHUNKFLOW_WITH_CUDA
    CF_CHECK(tensor->device().is_cpu() || tensor->is_cuda(), kOp,
             ": tensors must be on the CPU or a CUDA device, got ", tensor->device());
#else
    CF_CHECK(!tensor->is_cuda(), kOp, ": this build has no CUDA kernels (nvcc was not found at "
             "configure time), got tensors on ", tensor->device(),
             "; move them to the CPU (float32) or rebuild with CUDA");
    CF_CHECK(tensor->device().is_cpu(), kOp, ": tensors must be on the CPU, got ",
             tensor->device());
#endif
  }
  CF_CHECK(k.device() == q.device() && v.device() == q.device(), kOp,
           ": q, k and v must be on one device, got ", q.device(), ", ", k.device(), ", ",
           v.device());
  CF_CHECK(q.dim() == 3, kOp, ": q must be [total_q, heads, head_dim], got ", shape_of(q));
  CF_CHECK(k.dim() == 3, kOp, ": k must be [total_k, kv_heads, head_dim], got ", shape_of(k));
  CF_CHECK(v.sizes() == k.sizes(), kOp, ": v must have the shape of k ", shape_of(k), ", got ",
           shape_of(v));
  CF_CHECK(k.size(2) == q.size(2), kOp, ": k head_dim must equal q head_dim ", q.size(2),
           ", got k ", shape_of(k));
  CF_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), kOp,
           ": q, k and v must share a dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ",
           v.scalar_type());
  check_cu_seqlens(cu_seqlens_q, "cu_seqlens_q", q.size(0), "total_q (q.size(0))");
  check_cu_seqlens(cu_seqlens_k, "cu_seqlens_k", k.size(0), "total_k (k.size(0))");
  CF_CHECK(cu_seqlens_q.size(0) == cu_seqlens_k.size(0), kOp,
           ": cu_seqlens_q and cu_seqlens_k must both be [segments + 1], got ",
           shape_of(cu_seqlens_q), " and ", shape_of(cu_seqlens_k));

  Inputs inputs;
  inputs.dtype = scalar_type_of(q);
  inputs.q = q.contiguous();
  inputs.k = k.contiguous();
  inputs.v = v.contiguous();
  inputs.cu_seqlens_q = cu_seqlens_q.contiguous();
  inputs.cu_seqlens_k = cu_seqlens_k.contiguous();
  inputs.segments = to_int(cu_seqlens_q.size(0) - 1, "segments");
  inputs.heads = to_int(q.size(1), "heads");
  inputs.kv_heads = to_int(k.size(1), "kv_heads");
  inputs.head_dim = to_int(q.size(2), "head_dim");
  inputs.max_seqlen_q = to_int(max_seqlen_q, "max_seqlen_q");
  inputs.max_seqlen_k = to_int(max_seqlen_k, "max_seqlen_k");
  inputs.softmax_scale = static_cast<float>(softmax_scale);
  inputs.causal = causal;
  return inputs;
}

template <typename Params>
void fill_common(Params& params, const Inputs& inputs) {
  params.q = inputs.q.data_ptr();
  params.k = inputs.k.data_ptr();
  params.v = inputs.v.data_ptr();
  params.cu_seqlens_q = inputs.cu_seqlens_q.data_ptr<int32_t>();
  params.cu_seqlens_k = inputs.cu_seqlens_k.data_ptr<int32_t>();
  params.segments = inputs.segments;
  params.heads = inputs.heads;
  params.kv_heads = inputs.kv_heads;
  params.head_dim = inputs.head_dim;
  params.max_seqlen_q = inputs.max_seqlen_q;
  params.max_seqlen_k = inputs.max_seqlen_k;
  params.softmax_scale = inputs.softmax_scale;
  params.causal = inputs.causal;
  params.dtype = inputs.dtype;
}

// Device copies of the offsets (CUDA launchers read them in device memory); undefined on the CPU.
struct DeviceOffsets {
  torch::Tensor cu_seqlens_q, cu_seqlens_k;
};

#ifdef CHUNKFLOW_WITH_CUDA
// The CUDA launchers read offsets in device memory: check the host copies (check_params reads
// them), then point the params at device copies that live as long as the returned tensors are
// in use (the caller holds them until the launch is enqueued; the caching allocator keeps the
// memory valid for work already on the stream).
// Offsets already on the device (one copy per chunk, made by the caller) are used as they are;
// otherwise they are copied here, which blocks the host until the copy is done.
template <typename Params>
DeviceOffsets to_device_offsets(Params& params, const Inputs& inputs, const DeviceOffsets& given) {
  check_params(params, OffsetsIn::kHostMemory);
  DeviceOffsets offsets{offsets_on_device(given.cu_seqlens_q, inputs.cu_seqlens_q, inputs.q.device()),
                        offsets_on_device(given.cu_seqlens_k, inputs.cu_seqlens_k, inputs.q.device())};
  params.cu_seqlens_q = offsets.cu_seqlens_q.template data_ptr<int32_t>();
  params.cu_seqlens_k = offsets.cu_seqlens_k.template data_ptr<int32_t>();
  return offsets;
}

void* current_stream(const torch::Tensor& tensor) {
  return c10::cuda::getCurrentCUDAStream(tensor.device().index()).stream();
}
#endif

std::tuple<torch::Tensor, torch::Tensor> run_forward(const Inputs& inputs, const DeviceOffsets& device_offsets = {}) {
  torch::Tensor out = torch::empty_like(inputs.q);
  torch::Tensor lse = torch::empty({inputs.heads, inputs.q.size(0)},
                                   inputs.q.options().dtype(torch::kFloat));
  // No queries (a context-parallel rank may hold no rows of a chunk): nothing to compute.
  if (inputs.q.size(0) == 0) return {out, lse};
  // No keys at all: every row sees none (zeros, lse -inf by the contract); the launchers need
  // key memory to point at.
  if (inputs.k.size(0) == 0) return {out.zero_(), lse.fill_(-std::numeric_limits<float>::infinity())};
  VarlenAttentionParams params;
  fill_common(params, inputs);
  params.out = out.data_ptr();
  params.lse = lse.data_ptr<float>();
#ifdef CHUNKFLOW_WITH_CUDA
  if (inputs.q.is_cuda()) {
    const c10::cuda::CUDAGuard device_guard(inputs.q.device());
    const DeviceOffsets offsets = to_device_offsets(params, inputs, device_offsets);
    varlen_attention_forward_cuda(params, current_stream(inputs.q));
    return {out, lse};
  }
#endif
  varlen_attention_forward_cpu(params);
  return {out, lse};
}

class VarlenAttentionFunction : public torch::autograd::Function<VarlenAttentionFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& q,
                               const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& cu_seqlens_q,
                               const torch::Tensor& cu_seqlens_k, const torch::Tensor& device_cu_seqlens_q,
                               const torch::Tensor& device_cu_seqlens_k, int64_t max_seqlen_q,
                               int64_t max_seqlen_k, double softmax_scale, bool causal) {
    const Inputs inputs = check_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                       max_seqlen_k, softmax_scale, causal);
    const DeviceOffsets device_offsets{device_cu_seqlens_q, device_cu_seqlens_k};
    auto [out, lse] = run_forward(inputs, device_offsets);
    ctx->save_for_backward({inputs.q, inputs.k, inputs.v, out, lse, inputs.cu_seqlens_q, inputs.cu_seqlens_k,
                            device_cu_seqlens_q, device_cu_seqlens_k});
    ctx->saved_data["max_seqlen_q"] = max_seqlen_q;
    ctx->saved_data["max_seqlen_k"] = max_seqlen_k;
    ctx->saved_data["softmax_scale"] = softmax_scale;
    ctx->saved_data["causal"] = causal;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    Inputs inputs = check_inputs(saved[0], saved[1], saved[2], saved[5], saved[6],
                                 ctx->saved_data["max_seqlen_q"].toInt(),
                                 ctx->saved_data["max_seqlen_k"].toInt(),
                                 ctx->saved_data["softmax_scale"].toDouble(),
                                 ctx->saved_data["causal"].toBool());
    const torch::Tensor out = saved[3];
    const torch::Tensor lse = saved[4];
    const torch::Tensor dout = grad_outputs[0].to(out.scalar_type()).contiguous();
    CF_CHECK(dout.sizes() == out.sizes(), kOp, ": the output gradient must be ", shape_of(out),
             ", got ", shape_of(dout));

    torch::Tensor dq = torch::empty_like(inputs.q);
    if (inputs.q.size(0) == 0 || inputs.k.size(0) == 0) {
      dq.zero_();
      // No query read any key.
      return {dq, torch::zeros_like(inputs.k), torch::zeros_like(inputs.v), torch::Tensor(), torch::Tensor(),
              torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
    }
    torch::Tensor dk = torch::empty_like(inputs.k);
    torch::Tensor dv = torch::empty_like(inputs.v);
    VarlenAttentionBackwardParams params;
    fill_common(params, inputs);
    params.out = out.data_ptr();
    params.lse = lse.data_ptr<float>();
    params.dout = dout.data_ptr();
    params.dq = dq.data_ptr();
    params.dk = dk.data_ptr();
    params.dv = dv.data_ptr();
#ifdef CHUNKFLOW_WITH_CUDA
    if (inputs.q.is_cuda()) {
      const c10::cuda::CUDAGuard device_guard(inputs.q.device());
      const torch::Tensor dq_accum =
          torch::empty(inputs.q.sizes(), inputs.q.options().dtype(torch::kFloat));
      const torch::Tensor softmax_d = torch::empty_like(lse);
      params.dq_accum = dq_accum.data_ptr<float>();
      params.softmax_d = softmax_d.data_ptr<float>();
      const DeviceOffsets offsets = to_device_offsets(params, inputs, DeviceOffsets{saved[7], saved[8]});
      varlen_attention_backward_cuda(params, current_stream(inputs.q));
      return {dq, dk, dv, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(),
              torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
    }
#endif
    varlen_attention_backward_cpu(params);
    return {dq, dk, dv, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(),
            torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

// The chunkflow backend with optional device copies of the offsets. On the CPU, bfloat16/float16
// inputs are computed in float32 (as the CUDA kernels accumulate) and the output rounded back;
// autograd rounds the gradients back the same way.
torch::Tensor chunkflow_varlen_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                  const VarlenOffsets& offsets, double softmax_scale, bool causal) {
  if (q.device().is_cpu() && q.defined() && (q.scalar_type() == torch::kBFloat16 || q.scalar_type() == torch::kHalf)) {
    return chunkflow_varlen_attention(q.to(torch::kFloat), k.to(torch::kFloat), v.to(torch::kFloat), offsets, softmax_scale,
                               causal)
        .to(q.scalar_type());
  }
  // Autograd functions take defined tensors only: without device copies the host offsets stand
  // in (to_device_offsets then copies them, as they are not on q's device).
  const auto device_copy = [](const torch::Tensor& copy, const torch::Tensor& host) { return copy.defined() ? copy : host; };
  return VarlenAttentionFunction::apply(q, k, v, offsets.cu_seqlens_q, offsets.cu_seqlens_k,
                                        device_copy(offsets.device_cu_seqlens_q, offsets.cu_seqlens_q),
                                        device_copy(offsets.device_cu_seqlens_k, offsets.cu_seqlens_k),
                                        offsets.max_seqlen_q, offsets.max_seqlen_k, softmax_scale, causal);
}

torch::Tensor varlen_attention(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const torch::Tensor& cu_seqlens_q,
                               const torch::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
                               int64_t max_seqlen_k, double softmax_scale, bool causal) {
  VarlenOffsets offsets;
  offsets.cu_seqlens_q = cu_seqlens_q;
  offsets.cu_seqlens_k = cu_seqlens_k;
  offsets.max_seqlen_q = max_seqlen_q;
  offsets.max_seqlen_k = max_seqlen_k;
  return chunkflow_varlen_attention(q, k, v, offsets, softmax_scale, causal);
}

torch::Tensor varlen_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const VarlenOffsets& offsets, double softmax_scale, AttentionBackend backend) {
  // One contract for every backend: the same checks before any of them runs.
  check_inputs(q, k, v, offsets.cu_seqlens_q, offsets.cu_seqlens_k, offsets.max_seqlen_q, offsets.max_seqlen_k,
               softmax_scale, true);
  switch (resolve_attention_backend(backend, q.device(), q.scalar_type(), q.size(2))) {
    case AttentionBackend::kFlash: return flash_varlen_attention(q, k, v, offsets, softmax_scale);
    case AttentionBackend::kComposite: return composite_varlen_attention(q, k, v, offsets, softmax_scale);
    default: return chunkflow_varlen_attention(q, k, v, offsets, softmax_scale, true);
  }
}

std::tuple<torch::Tensor, torch::Tensor> varlen_attention_forward(
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
    const torch::Tensor& cu_seqlens_q, const torch::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
    int64_t max_seqlen_k, double softmax_scale, bool causal) {
  torch::NoGradGuard no_grad;
  return run_forward(check_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                  max_seqlen_k, softmax_scale, causal));
}

}  // namespace chunkflow::kernels
