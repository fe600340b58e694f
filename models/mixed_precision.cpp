// Compute-dtype copies of the float32 master weights; see mixed_precision.h.
#include "models/mixed_precision.h"

#include <torch/autograd.h>

#include "core/error.h"

namespace chunkflow::models {
namespace {

// Forward: the shared compute copy (an alias, so every chunk's graph holds one storage). Backward:
// the gradient in the master's dtype, which autograd adds into master.grad.
class CastToCompute : public torch::autograd::Function<CastToCompute> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* context, const torch::Tensor& master,
                               const torch::Tensor& copy) {
    context->saved_data["master_dtype"] = static_cast<int64_t>(master.scalar_type());
    return copy.detach();
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* context,
                                                 torch::autograd::variable_list gradients) {
    const auto master_dtype = static_cast<torch::ScalarType>(context->saved_data["master_dtype"].toInt());
    const torch::Tensor& gradient = gradients[0];
    return {gradient.defined() ? gradient.to(master_dtype) : gradient, torch::Tensor()};
  }
};

}  // namespace

torch::ScalarType parse_dtype(const std::string& name, const std::string& key) {
  if (name == "float32") return torch::kFloat;
  if (name == "bfloat16") return torch::kBFloat16;
  if (name == "float16") return torch::kHalf;
  CF_FAIL(key, " must be float32, bfloat16 or float16, got '", name, "'");
}

std::string dtype_name(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat: return "float32";
    case torch::kBFloat16: return "bfloat16";
    case torch::kHalf: return "float16";
    default: break;
  }
  CF_FAIL("no dtype name for ", c10::toString(dtype));
}

torch::Tensor ComputeWeights::operator()(const torch::Tensor& master) {
  if (!master.defined() || master.scalar_type() == dtype_) return master;
  torch::Tensor copy;
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    Copy& entry = copies_[master.unsafeGetTensorImpl()];
    const uint32_t version = master._version();
    if (!entry.values.defined() || entry.version != version || entry.values.device() != master.device() ||
        entry.values.sizes() != master.sizes()) {
      const torch::NoGradGuard no_grad;
      entry.values = master.detach().to(dtype_);
      entry.version = version;
    }
    copy = entry.values;
  }
  if (!torch::GradMode::is_enabled() || !master.requires_grad()) return copy;
  return CastToCompute::apply(master, copy);
}

int64_t ComputeWeights::bytes() const {
  const std::lock_guard<std::mutex> lock(mutex_);
  int64_t total = 0;
  for (const auto& entry : copies_) total += static_cast<int64_t>(entry.second.values.nbytes());
  return total;
}

}  // namespace chunkflow::models
