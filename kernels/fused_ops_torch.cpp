// Torch adapters for the fused element-wise ops: tensor checks, the path choice (fused CPU,
// composite CPU, CUDA), tensors -> params, and the autograd Functions.
#include "kernels/fused_ops_torch.h"

#include <torch/autograd.h>

#include <cmath>
#include <initializer_list>
#include <sstream>
#include <string>
#include <utility>

#ifdef CHUNKFLOW_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "core/error.h"
#include "kernels/fused_ops.h"

namespace chunkflow::kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::string shape_of(const torch::Tensor& tensor) {
  std::ostringstream text;
  text << tensor.sizes();
  return text.str();
}

enum class Path { kFusedCpu, kCompositeCpu, kCuda };

// Checks that the named float tensors are defined and share the first one's device and dtype,
// then picks the path (see fused_ops_torch.h).
Path choose_path(const char* op,
                 std::initializer_list<std::pair<const char*, const torch::Tensor*>> tensors) {
  const auto& [first_name, first] = *tensors.begin();
  for (const auto& [name, tensor] : tensors) {
    CF_CHECK(tensor->defined(), op, ": ", name, " is an undefined tensor");
    CF_CHECK(tensor->device() == first->device(), op, ": ", name, " is on ", tensor->device(),
             " but ", first_name, " is on ", first->device(), "; all tensors must share a device");
    CF_CHECK(tensor->scalar_type() == first->scalar_type(), op, ": ", name, " is ",
             tensor->scalar_type(), " but ", first_name, " is ", first->scalar_type(),
             "; the tensors must share a dtype");
  }
  const torch::ScalarType dtype = first->scalar_type();
  if (first->is_cuda()) {
#ifdef CHUNKFLOW_WITH_CUDA
    CF_CHECK(dtype == torch::kFloat || dtype == torch::kBFloat16 || dtype == torch::kHalf, op,
             ": the CUDA path takes float32, bfloat16 or float16, got ", first_name, " ", dtype);
    return Path::kCuda;
#else
    CF_FAIL(op, ": ", first_name, " is a CUDA tensor (", first->device(),
            ") but this build has no CUDA kernels (configured without nvcc or with "
            "CHUNKFLOW_WITH_CUDA=OFF); rebuild with CUDA or move the tensors to the CPU");
#endif
  }
  CF_CHECK(first->device().is_cpu(), op, ": tensors must be on the CPU or a CUDA device, got ",
           first_name, " on ", first->device());
  CF_CHECK(torch::isFloatingType(dtype), op, ": ", first_name,
           " must be a floating-point tensor, got ", dtype);
  return dtype == torch::kFloat ? Path::kFusedCpu : Path::kCompositeCpu;
}

ScalarType kernel_dtype(const torch::Tensor& tensor) {
  switch (tensor.scalar_type()) {
    case torch::kFloat: return ScalarType::kFloat32;
    case torch::kBFloat16: return ScalarType::kBFloat16;
    case torch::kHalf: return ScalarType::kFloat16;
    default: break;
  }
  CF_FAIL("fused ops: no kernel dtype for ", tensor.scalar_type(), " (choose_path admits only "
          "float32, bfloat16 and float16 to the kernels)");
}

#ifdef CHUNKFLOW_WITH_CUDA
// The current stream of the tensor's device, with that device made current for the launch.
struct CudaLaunch {
  explicit CudaLaunch(const torch::Tensor& tensor)
      : guard(tensor.device()), stream(c10::cuda::getCurrentCUDAStream(tensor.device().index()).stream()) {}
  c10::cuda::CUDAGuard guard;
  void* stream;
};
#endif

// One launch per params type: the CUDA launcher for CUDA tensors, else the CPU launcher.
void launch(const RmsNormParams& params, const torch::Tensor& like) {
#ifdef CHUNKFLOW_WITH_CUDA
  if (like.is_cuda()) {
    const CudaLaunch cuda(like);
    rms_norm_forward_cuda(params, cuda.stream);
    return;
  }
#endif
  static_cast<void>(like);
  rms_norm_forward_cpu(params);
}

void launch(const RmsNormBackwardParams& params, const torch::Tensor& like) {
#ifdef CHUNKFLOW_WITH_CUDA
  if (like.is_cuda()) {
    const CudaLaunch cuda(like);
    rms_norm_backward_cuda(params, cuda.stream);
    return;
  }
#endif
  static_cast<void>(like);
  rms_norm_backward_cpu(params);
}

void launch(const RotaryParams& params, const torch::Tensor& like) {
#ifdef CHUNKFLOW_WITH_CUDA
  if (like.is_cuda()) {
    const CudaLaunch cuda(like);
    rotary_cuda(params, cuda.stream);
    return;
  }
#endif
  static_cast<void>(like);
  rotary_cpu(params);
}

void launch(const SwigluParams& params, const torch::Tensor& like) {
#ifdef CHUNKFLOW_WITH_CUDA
  if (like.is_cuda()) {
    const CudaLaunch cuda(like);
    swiglu_forward_cuda(params, cuda.stream);
    return;
  }
#endif
  static_cast<void>(like);
  swiglu_forward_cpu(params);
}

void launch(const SwigluBackwardParams& params, const torch::Tensor& like) {
#ifdef CHUNKFLOW_WITH_CUDA
  if (like.is_cuda()) {
    const CudaLaunch cuda(like);
    swiglu_backward_cuda(params, cuda.stream);
    return;
  }
#endif
  static_cast<void>(like);
  swiglu_backward_cpu(params);
}

// The incoming gradient in the layout the kernels read.
torch::Tensor gradient_like(const torch::Tensor& gradient, const torch::Tensor& like) {
  return gradient.to(like.scalar_type()).contiguous().view(like.sizes());
}

class RmsNormFunction : public torch::autograd::Function<RmsNormFunction> {
 public:
  // x [..., hidden] and weight [hidden] contiguous, checked by rms_norm.
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& weight, double eps) {
    const int64_t hidden = weight.size(0);
    const int64_t rows = x.numel() / hidden;
    torch::Tensor out = torch::empty_like(x);
    torch::Tensor rstd = torch::empty({rows}, x.options().dtype(torch::kFloat));
    RmsNormParams params;
    params.x = x.const_data_ptr();
    params.weight = weight.const_data_ptr();
    params.out = out.mutable_data_ptr();
    params.rstd = rstd.mutable_data_ptr<float>();
    params.rows = rows;
    params.hidden = hidden;
    params.eps = static_cast<float>(eps);
    params.dtype = kernel_dtype(x);
    launch(params, x);
    ctx->save_for_backward({x, weight, rstd});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor& x = saved[0];
    const torch::Tensor& weight = saved[1];
    const torch::Tensor& rstd = saved[2];
    if (!grad_outputs[0].defined()) return {torch::Tensor(), torch::Tensor(), torch::Tensor()};
    const torch::Tensor dout = gradient_like(grad_outputs[0], x);
    const int64_t hidden = weight.size(0);
    const int64_t rows = x.numel() / hidden;
    torch::Tensor dx = torch::empty_like(x);
    // Both gradients come from one pass; a frozen weight's is dropped.
    torch::Tensor dweight = torch::empty_like(weight);
    torch::Tensor workspace =
        torch::empty({rms_norm_weight_partials(rows), hidden}, x.options().dtype(torch::kFloat));
    RmsNormBackwardParams params;
    params.x = x.const_data_ptr();
    params.weight = weight.const_data_ptr();
    params.rstd = rstd.const_data_ptr<float>();
    params.dout = dout.const_data_ptr();
    params.dx = dx.mutable_data_ptr();
    params.dweight = dweight.mutable_data_ptr();
    params.dweight_workspace = workspace.mutable_data_ptr<float>();
    params.rows = rows;
    params.hidden = hidden;
    params.dtype = kernel_dtype(x);
    launch(params, x);
    return {ctx->needs_input_grad(0) ? dx : torch::Tensor(),
            ctx->needs_input_grad(1) ? dweight : torch::Tensor(), torch::Tensor()};
  }
};

RotaryParams rotary_params(const torch::Tensor& in, const torch::Tensor& positions, const torch::Tensor& inv_freq,
                           torch::Tensor& out, double attention_scaling, bool inverse) {
  RotaryParams params;
  params.in = in.const_data_ptr();
  params.positions = positions.const_data_ptr<int64_t>();
  params.inv_freq = inv_freq.const_data_ptr<float>();
  params.out = out.mutable_data_ptr();
  params.tokens = in.size(0);
  params.heads = in.size(1);
  params.head_dim = in.size(2);
  params.attention_scaling = static_cast<float>(attention_scaling);
  params.inverse = inverse;
  params.dtype = kernel_dtype(in);
  return params;
}

class RotaryFunction : public torch::autograd::Function<RotaryFunction> {
 public:
  // x [tokens, heads, head_dim], positions [tokens] int64 and inv_freq [head_dim / 2] fp32,
  // contiguous, checked by apply_rotary.
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& positions,
                               const torch::Tensor& inv_freq, double attention_scaling) {
    torch::Tensor out = torch::empty_like(x);
    launch(rotary_params(x, positions, inv_freq, out, attention_scaling, /*inverse=*/false), x);
    ctx->save_for_backward({positions, inv_freq});
    ctx->saved_data["attention_scaling"] = attention_scaling;
    ctx->saved_data["dtype"] = static_cast<int64_t>(x.scalar_type());
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list none(4);
    if (!grad_outputs[0].defined()) return none;
    const variable_list saved = ctx->get_saved_variables();
    const auto dtype = static_cast<torch::ScalarType>(ctx->saved_data["dtype"].toInt());
    const torch::Tensor dout = grad_outputs[0].to(dtype).contiguous();
    torch::Tensor dx = torch::empty_like(dout);
    // A scaled rotation: its backward rotates the gradient back, with the same scaling.
    launch(rotary_params(dout, saved[0], saved[1], dx, ctx->saved_data["attention_scaling"].toDouble(),
                         /*inverse=*/true),
           dout);
    return {dx, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

class SwigluFunction : public torch::autograd::Function<SwigluFunction> {
 public:
  // gate and up contiguous, same shape, checked by swiglu.
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& gate,
                               const torch::Tensor& up) {
    torch::Tensor out = torch::empty_like(gate);
    SwigluParams params;
    params.gate = gate.const_data_ptr();
    params.up = up.const_data_ptr();
    params.out = out.mutable_data_ptr();
    params.elements = gate.numel();
    params.dtype = kernel_dtype(gate);
    launch(params, gate);
    ctx->save_for_backward({gate, up});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    if (!grad_outputs[0].defined()) return {torch::Tensor(), torch::Tensor()};
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor& gate = saved[0];
    const torch::Tensor& up = saved[1];
    const torch::Tensor dout = gradient_like(grad_outputs[0], gate);
    torch::Tensor dgate = torch::empty_like(gate);
    torch::Tensor dup = torch::empty_like(up);
    SwigluBackwardParams params;
    params.gate = gate.const_data_ptr();
    params.up = up.const_data_ptr();
    params.dout = dout.const_data_ptr();
    params.dgate = dgate.mutable_data_ptr();
    params.dup = dup.mutable_data_ptr();
    params.elements = gate.numel();
    params.dtype = kernel_dtype(gate);
    launch(params, gate);
    return {ctx->needs_input_grad(0) ? dgate : torch::Tensor(),
            ctx->needs_input_grad(1) ? dup : torch::Tensor()};
  }
};

// The composites of the unfused CPU path: the same arithmetic in plain torch ops.

torch::Tensor rms_norm_composite(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  const torch::Tensor wide = x.to(torch::promote_types(x.scalar_type(), torch::kFloat));
  const torch::Tensor normed = wide * torch::rsqrt(wide.pow(2).mean(-1, true) + eps);
  return weight * normed.to(x.scalar_type());
}

torch::Tensor rotary_composite(const torch::Tensor& x, const torch::Tensor& positions, const torch::Tensor& inv_freq,
                               double attention_scaling) {
  // Hugging Face's fp32 tables (fp32 angles, cos and sin times the scaling), applied in x's dtype.
  const int64_t half = x.size(2) / 2;
  const torch::Tensor angles = positions.to(torch::kFloat).unsqueeze(1) * inv_freq.unsqueeze(0);
  const torch::Tensor doubled = torch::cat({angles, angles}, 1).unsqueeze(1);
  const torch::Tensor rotated = torch::cat({-x.narrow(2, half, half), x.narrow(2, 0, half)}, 2);
  const torch::Tensor cos = doubled.cos() * attention_scaling, sin = doubled.sin() * attention_scaling;
  return x * cos.to(x.scalar_type()) + rotated * sin.to(x.scalar_type());
}

}  // namespace

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  constexpr const char* kOp = "rms_norm";
  const Path path = choose_path(kOp, {{"x", &x}, {"weight", &weight}});
  CF_CHECK(weight.dim() == 1 && weight.size(0) > 0, kOp,
           ": weight must be [hidden] with hidden > 0, got ", shape_of(weight));
  CF_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(0), kOp,
           ": x must be [..., hidden] with hidden = weight.size(0) = ", weight.size(0), ", got ",
           shape_of(x));
  CF_CHECK(std::isfinite(eps) && eps >= 0.0, kOp, ": eps must be finite and >= 0, got ", eps);
  if (path == Path::kCompositeCpu) return rms_norm_composite(x, weight, eps);
  return RmsNormFunction::apply(x.contiguous(), weight.contiguous(), eps);
}

torch::Tensor apply_rotary(const torch::Tensor& x, const torch::Tensor& positions, const torch::Tensor& inv_freq,
                           double attention_scaling) {
  constexpr const char* kOp = "apply_rotary";
  const Path path = choose_path(kOp, {{"x", &x}});
  CF_CHECK(x.dim() == 3 && x.size(2) > 0 && x.size(2) % 2 == 0, kOp,
           ": x must be [tokens, heads, head_dim] with head_dim even and > 0 (rotate-half pairs "
           "element i with i + head_dim / 2), got ", shape_of(x));
  CF_CHECK(positions.defined(), kOp, ": positions is an undefined tensor");
  CF_CHECK(positions.dim() == 1 && positions.size(0) == x.size(0), kOp,
           ": positions must be [tokens] with tokens = x.size(0) = ", x.size(0), ", got ",
           shape_of(positions));
  CF_CHECK(positions.scalar_type() == torch::kLong, kOp, ": positions must be int64, got ",
           positions.scalar_type());
  CF_CHECK(positions.device() == x.device(), kOp, ": positions must be on x's device ",
           x.device(), ", got ", positions.device());
  CF_CHECK(inv_freq.defined(), kOp, ": inv_freq is an undefined tensor");
  CF_CHECK(inv_freq.dim() == 1 && inv_freq.size(0) == x.size(2) / 2 && inv_freq.scalar_type() == torch::kFloat, kOp,
           ": inv_freq must be [head_dim / 2] = [", x.size(2) / 2, "] float32, got ", shape_of(inv_freq), " ",
           inv_freq.scalar_type());
  CF_CHECK(inv_freq.device() == x.device(), kOp, ": inv_freq must be on x's device ", x.device(), ", got ",
           inv_freq.device());
  CF_CHECK(std::isfinite(attention_scaling) && attention_scaling > 0.0, kOp,
           ": attention_scaling must be finite and > 0, got ", attention_scaling);
  if (path == Path::kCompositeCpu) return rotary_composite(x, positions, inv_freq, attention_scaling);
  return RotaryFunction::apply(x.contiguous(), positions.contiguous(), inv_freq.contiguous(), attention_scaling);
}

torch::Tensor rope_inv_freq(const RopeFrequencies& frequencies, const torch::Device& device) {
  return torch::tensor(frequencies.inv_freq, torch::kFloat).to(device);
}

torch::Tensor swiglu(const torch::Tensor& gate, const torch::Tensor& up) {
  constexpr const char* kOp = "swiglu";
  const Path path = choose_path(kOp, {{"gate", &gate}, {"up", &up}});
  CF_CHECK(gate.sizes() == up.sizes(), kOp, ": gate and up must have the same shape, got gate ",
           shape_of(gate), " and up ", shape_of(up));
  if (path == Path::kCompositeCpu) return torch::silu(gate) * up;
  return SwigluFunction::apply(gate.contiguous(), up.contiguous());
}

}  // namespace chunkflow::kernels
