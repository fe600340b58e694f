// AdamW as one multi-tensor update per parameter group (LibTorch's _fused_adamw_, the kernel behind
// torch.optim.AdamW(fused=True)) instead of ~10 operators per parameter tensor: on a GPU the
// per-tensor form launches thousands of small kernels per step, which the host cannot issue as fast
// as the GPU runs them.
#pragma once

#include <torch/optim/adamw.h>

#include <cstdint>
#include <map>
#include <string>

namespace chunkflow::trainer {

// Same state (torch::optim::AdamWParamState: step, exp_avg, exp_avg_sq), options and checkpoints as
// torch::optim::AdamW, so either can resume the other's state; same update in float32 arithmetic
// (bias corrections computed per element in float32 rather than on the host in double: the two
// differ in the last bits). Parameters, gradients and moments must share one floating dtype and
// device per group (float32 master weights here). amsgrad is not supported (rejected at step()).
class FusedAdamW : public torch::optim::AdamW {
 public:
  using torch::optim::AdamW::AdamW;
  torch::Tensor step(LossClosure closure = nullptr) override;

 private:
  // The step count as the float32 scalar tensor the kernel reads, one per device, refilled each
  // step without a host-device synchronisation.
  torch::Tensor step_scalar(const torch::Device& device, int64_t step);
  std::map<std::string, torch::Tensor> step_scalars_;
};

}  // namespace chunkflow::trainer
