// FusedAdamW against LibTorch's per-tensor AdamW on one device, shared by the CPU test and the GPU
// test: several steps of both from the same start with the same gradients (two groups, odd sizes,
// weight decay on one) must give the same parameters and moments to float32 rounding.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <vector>

#include "trainer/fused_adamw.h"

namespace chunkflow::testing {

// max |a - b| / max |b| over the tensors.
inline double relative_difference(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  double difference = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    difference = std::max(difference, (a[i] - b[i]).abs().max().item<double>());
    scale = std::max(scale, b[i].abs().max().item<double>());
  }
  return difference / scale;
}

// Six updates of both optimizers from the same start with the same gradients on `device`.
inline void expect_same_updates(const torch::Device& device) {
  torch::manual_seed(7);
  const auto options = torch::TensorOptions().dtype(torch::kFloat32).device(device);
  const std::vector<std::vector<int64_t>> shapes{{37, 11}, {5}, {3, 7, 13}, {1}, {129}};
  std::vector<torch::Tensor> start;
  for (const auto& shape : shapes) start.push_back(torch::randn(shape, options));
  const auto make_params = [&] {
    std::vector<torch::Tensor> params;
    for (const auto& tensor : start) params.push_back(tensor.clone().requires_grad_(true));
    return params;
  };
  std::vector<torch::Tensor> fused_params = make_params(), plain_params = make_params();
  const auto groups = [](std::vector<torch::Tensor>& params) {
    const auto options_of = [](double decay) {
      return std::make_unique<torch::optim::AdamWOptions>(
          torch::optim::AdamWOptions(3e-3).betas({0.9, 0.95}).eps(1e-8).weight_decay(decay));
    };
    std::vector<torch::optim::OptimizerParamGroup> list;
    list.emplace_back(std::vector<torch::Tensor>{params[0], params[2], params[4]}, options_of(0.1));
    list.emplace_back(std::vector<torch::Tensor>{params[1], params[3]}, options_of(0.0));
    return list;
  };
  trainer::FusedAdamW fused(groups(fused_params), torch::optim::AdamWOptions(3e-3));
  torch::optim::AdamW plain(groups(plain_params), torch::optim::AdamWOptions(3e-3));
  for (int step = 0; step < 6; ++step) {
    for (size_t i = 0; i < start.size(); ++i) {
      const torch::Tensor gradient = torch::randn(start[i].sizes(), options) * (step + 1);
      fused_params[i].mutable_grad() = gradient.clone();
      plain_params[i].mutable_grad() = gradient.clone();
    }
    fused.step();
    plain.step();
  }
  EXPECT_LE(relative_difference(fused_params, plain_params), 2e-6);
  std::vector<torch::Tensor> fused_moments, plain_moments;
  for (size_t i = 0; i < start.size(); ++i) {
    const auto& fused_state = static_cast<const torch::optim::AdamWParamState&>(
        *fused.state().at(fused_params[i].unsafeGetTensorImpl()));
    const auto& plain_state = static_cast<const torch::optim::AdamWParamState&>(
        *plain.state().at(plain_params[i].unsafeGetTensorImpl()));
    EXPECT_EQ(fused_state.step(), 6);
    fused_moments.insert(fused_moments.end(), {fused_state.exp_avg(), fused_state.exp_avg_sq()});
    plain_moments.insert(plain_moments.end(), {plain_state.exp_avg(), plain_state.exp_avg_sq()});
  }
  EXPECT_LE(relative_difference(fused_moments, plain_moments), 1e-6);
  // The parameters moved (a test of two optimizers that both did nothing would pass above).
  EXPECT_GT(relative_difference(fused_params, start), 1e-3);
}

}  // namespace chunkflow::testing
