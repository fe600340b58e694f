// One _fused_adamw_ call per (parameter group, device, step count); see fused_adamw.h.
#include "trainer/fused_adamw.h"

#include <ATen/ops/_fused_adamw.h>
#include <torch/torch.h>

#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"

namespace chunkflow::trainer {
namespace {

// The tensors of one multi-tensor call.
struct UpdateList {
  std::vector<torch::Tensor> params, grads, exp_avgs, exp_avg_sqs;
};

}  // namespace

torch::Tensor FusedAdamW::step_scalar(const torch::Device& device, int64_t step) {
  torch::Tensor& scalar = step_scalars_[device.str()];
  if (!scalar.defined()) scalar = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat32).device(device));
  scalar.fill_(static_cast<double>(step));
  return scalar;
}

torch::Tensor FusedAdamW::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  for (auto& group : param_groups()) {
    const auto& options = static_cast<const torch::optim::AdamWOptions&>(group.options());
    CF_CHECK(!options.amsgrad(), "FusedAdamW: amsgrad is not supported");
    // Parameters at different step counts (one without a gradient in some step) or on different
    // devices go to separate calls: the kernel reads one step count per call here.
    std::map<std::tuple<std::string, int64_t>, UpdateList> calls;
    for (auto& parameter : group.params()) {
      if (!parameter.grad().defined()) continue;
      auto& slot = state_[parameter.unsafeGetTensorImpl()];
      if (!slot) {  // as torch::optim::AdamW initialises it
        auto fresh = std::make_unique<torch::optim::AdamWParamState>();
        fresh->step(0);
        fresh->exp_avg(torch::zeros_like(parameter, torch::MemoryFormat::Preserve));
        fresh->exp_avg_sq(torch::zeros_like(parameter, torch::MemoryFormat::Preserve));
        slot = std::move(fresh);
      }
      auto& state = static_cast<torch::optim::AdamWParamState&>(*slot);
      state.step(state.step() + 1);
      UpdateList& call = calls[{parameter.device().str(), state.step()}];
      call.params.push_back(parameter);
      call.grads.push_back(parameter.grad());
      call.exp_avgs.push_back(state.exp_avg());
      call.exp_avg_sqs.push_back(state.exp_avg_sq());
    }
    for (auto& [key, call] : calls) {
      const torch::Tensor step_count = step_scalar(call.params.front().device(), std::get<1>(key));
      // The kernel reads one step tensor per parameter; they may all be the same tensor.
      const std::vector<torch::Tensor> steps(call.params.size(), step_count);
      at::_fused_adamw_(call.params, call.grads, call.exp_avgs, call.exp_avg_sqs, /*max_exp_avg_sqs=*/{}, steps,
                        options.lr(), std::get<0>(options.betas()), std::get<1>(options.betas()),
                        options.weight_decay(), options.eps(), /*amsgrad=*/false, /*maximize=*/false);
    }
  }
  return loss;
}

}  // namespace chunkflow::trainer
