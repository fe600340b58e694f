// The independent reference for the exactness tests: every sequence run whole, dense attention
// with an explicit causal mask, standard mean-over-loss-tokens cross-entropy, written with plain
// tensor ops and no ChunkFlow code path (no kernels, no plan, no scheduler).
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "configs/model_config.h"

namespace chunkflow::testing {

struct ReferenceSequence {
  std::vector<int64_t> tokens;
  std::vector<uint8_t> loss_mask;  // empty: every token but the first is a target
};

// Mean token cross-entropy of `sequences` under the parameters `named_parameters` (Hugging Face
// names, as CausalLM registers them). Differentiable with respect to those tensors.
torch::Tensor reference_mean_loss(const torch::OrderedDict<std::string, torch::Tensor>& named_parameters,
                                  const configs::ModelConfig& config,
                                  const std::vector<ReferenceSequence>& sequences);

}  // namespace chunkflow::testing
