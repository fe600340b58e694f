// Mixed precision (model.dtype): parameters stay float32 — the master weights the optimizer
// updates, checkpoints save and exports convert — while the layers compute with a copy in the
// compute dtype (bfloat16). The copy is made once per parameter update and shared by every chunk's
// graph; its gradient flows back into the float32 .grad, so gradients accumulate in float32 across
// chunks and micro-steps, and AdamW keeps float32 state. This is what Megatron-LM's --bf16 means.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>

namespace chunkflow::models {

// "float32" | "bfloat16" | "float16" -> the torch dtype; throws core::Error naming `key` and the
// value otherwise ("<key> must be float32, bfloat16 or float16, got '<value>'"). The one place a
// dtype name is read (model.dtype, export dtypes).
torch::ScalarType parse_dtype(const std::string& name, const std::string& key);
// The inverse: the name parse_dtype reads.
std::string dtype_name(torch::ScalarType dtype);

class ComputeWeights {
 public:
  explicit ComputeWeights(torch::ScalarType compute_dtype = torch::kFloat) : dtype_(compute_dtype) {}
  torch::ScalarType dtype() const { return dtype_; }
  bool mixed() const { return dtype_ != torch::kFloat; }

  // `master` (a float32 parameter) in the compute dtype, differentiable: the backward hands the
  // gradient to `master` in float32. `master` itself when no cast is needed. The copy is remade
  // when `master` changed (its version counter moves with every in-place update: optimizer steps,
  // checkpoint loads), moved or was resized; otherwise every call returns an alias of one copy.
  // Thread-safe (a layer recomputed in the backward calls it from autograd's thread).
  torch::Tensor operator()(const torch::Tensor& master);

  // Activations entering the layers (embedding output, received pipeline activations) in the
  // compute dtype; differentiable.
  torch::Tensor activations(const torch::Tensor& x) const { return x.scalar_type() == dtype_ ? x : x.to(dtype_); }

  // Bytes held by the compute copies (0 without mixed precision).
  int64_t bytes() const;

 private:
  struct Copy {
    torch::Tensor values;  // the compute-dtype copy, outside autograd
    uint32_t version = 0;
  };
  torch::ScalarType dtype_;
  mutable std::mutex mutex_;
  std::unordered_map<const void*, Copy> copies_;  // by the master's TensorImpl
};

}  // namespace chunkflow::models
