// The attention backends behind kernels::varlen_attention's backend argument that are not our own
// kernel: LibTorch's bundled FlashAttention-2 and a composite of plain tensor ops. Internal to
// kernels/ (callers choose a backend through attention_torch.h); same contract and shapes as
// varlen_attention there, causal bottom-right, autograd-aware.
#pragma once

#include <torch/types.h>

#include "kernels/attention_torch.h"

namespace chunkflow::kernels {

// at::_flash_attention_forward / _backward with cumulative offsets (FlashAttention-2's
// mha_varlen_fwd/bwd): CUDA, bf16/fp16, GQA natively. Uses offsets.device_* when defined, else
// copies the host offsets to the device.
torch::Tensor flash_varlen_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                     const VarlenOffsets& offsets, double softmax_scale);

// Segment by segment with an explicit bottom-right mask, in float32 math (float64 stays float64);
// the output is rounded to q's dtype. Any device.
torch::Tensor composite_varlen_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                         const VarlenOffsets& offsets, double softmax_scale);

// `device_copy` when it is defined and on `device`, else `host` (int32 offsets) copied there now,
// which blocks the host until the copy is done.
torch::Tensor offsets_on_device(const torch::Tensor& device_copy, const torch::Tensor& host, const torch::Device& device);

// Our kernel (attention_torch.cpp) with optional device offsets; CPU bf16/fp16 in float32 math.
torch::Tensor chunkflow_varlen_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                         const VarlenOffsets& offsets, double softmax_scale, bool causal);

}  // namespace chunkflow::kernels
