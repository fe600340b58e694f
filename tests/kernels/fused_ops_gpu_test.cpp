// CUDA RMSNorm, rotary embedding and SwiGLU against float64 references by FlashAttention's rule:
// for float32, bfloat16 and float16 inputs, our max error is at most 2x (outputs) and 3x
// (gradients) the max error of the same computation done by plain torch ops in that precision
// (the composite the model used before), plus a small floor for float32 rounding noise. Odd
// sizes, fresh random data each run (the seed is printed, CHUNKFLOW_TEST_SEED replays it),
// launcher outputs NaN-poisoned. Every test skips where no CUDA device is usable.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernels/fused_ops.h"
#include "kernels/fused_ops_torch.h"
#include "tests/support/gpu_skip.h"
#include "tests/support/test_seed.h"

#ifdef CHUNKFLOW_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace chunkflow::kernels {
namespace {

constexpr double kOutputFactor = 2.0;
constexpr double kGradientFactor = 3.0;
// Relative to max |reference|: float32 rounding noise (reduction order, fused multiply-adds) that
// the rule's factor cannot cover when the composite itself is float32-exact.
constexpr double kFloor = 1e-5;
// Rotary: an ulp of difference between libm's powf and torch's pow in one inv_freq moves an angle
// by up to position x 1.2e-7; positions stay below 256, so 3e-5.
constexpr double kRotaryFloor = 5e-5;

using chunkflow::testing::pick_seed;

const char* dtype_name(torch::ScalarType dtype) {
  return dtype == torch::kFloat ? "fp32" : dtype == torch::kBFloat16 ? "bf16" : "fp16";
}

double max_error(const torch::Tensor& actual, const torch::Tensor& reference) {
  return (actual.to(torch::kDouble) - reference).abs().max().item<double>();
}

// Ours vs the composite, both against the float64 reference.
void expect_within_rule(const torch::Tensor& ours, const torch::Tensor& composite,
                        const torch::Tensor& reference, double factor, double floor,
                        const std::string& what) {
  ASSERT_EQ(ours.sizes(), reference.sizes()) << what;
  EXPECT_FALSE(torch::isnan(ours).any().item<bool>()) << what << " holds NaN";
  const double ours_error = max_error(ours, reference);
  const double composite_error = max_error(composite, reference);
  const double magnitude = reference.abs().max().item<double>();
  std::cout << "[ max err  ] " << what << ": ours " << ours_error << ", composite "
            << composite_error << " (max |ref| " << magnitude << ")\n";
  EXPECT_LE(ours_error, factor * composite_error + floor * magnitude) << what;
}

struct Result {
  torch::Tensor out, first, second;  // output and the gradients of the two inputs
};

// Runs `op` on leaves made from `inputs` and backpropagates dout.
template <typename Op>
Result run(const Op& op, const std::vector<torch::Tensor>& inputs, const torch::Tensor& dout) {
  std::vector<torch::Tensor> leaves;
  for (const auto& input : inputs) leaves.push_back(input.detach().clone().requires_grad_());
  const torch::Tensor out = op(leaves);
  out.backward(dout.to(out.scalar_type()));
  Result result{out.detach(), leaves[0].grad(), torch::Tensor()};
  if (leaves.size() > 1) result.second = leaves[1].grad();
  return result;
}

// The plain-torch composites of the previous model code (any dtype; float64 gives the reference).
torch::Tensor rms_norm_composite(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  const auto wide = x.to(torch::promote_types(x.scalar_type(), torch::kFloat));
  return weight * (wide * torch::rsqrt(wide.pow(2).mean(-1, true) + eps)).to(x.scalar_type());
}

// Hugging Face's fp32 angles [tokens, 1, head_dim] (cat of the two halves), on positions' device.
torch::Tensor hf_angles(const torch::Tensor& positions, const RopeFrequencies& frequencies) {
  const auto inv_freq = rope_inv_freq(frequencies, positions.device());
  const auto angles = positions.to(torch::kFloat).unsqueeze(1) * inv_freq.unsqueeze(0);
  return torch::cat({angles, angles}, 1).unsqueeze(1);
}

// x * cos + rotate_half(x) * sin with the fp32 angles' cos/sin (times the attention scaling)
// taken in `table_dtype`, then cast to x's dtype (the composite: float32 tables; the reference:
// float64 of the same angles).
torch::Tensor rotary_composite(const torch::Tensor& x, const torch::Tensor& positions,
                               const RopeFrequencies& frequencies, torch::ScalarType table_dtype) {
  const int64_t half = x.size(2) / 2;
  const auto angles = hf_angles(positions, frequencies).to(table_dtype);
  const double scaling = frequencies.attention_scaling;
  const auto rotated = torch::cat({-x.narrow(2, half, half), x.narrow(2, 0, half)}, 2);
  return x * (angles.cos() * scaling).to(x.scalar_type()) + rotated * (angles.sin() * scaling).to(x.scalar_type());
}

class FusedOpsGpuTest : public ::testing::Test {
 protected:
  FusedOpsGpuTest() : seed_(pick_seed()) {
    std::cout << "[ seed     ] " << seed_ << " (replay with CHUNKFLOW_TEST_SEED=" << seed_ << ")\n";
    RecordProperty("seed", std::to_string(seed_));
    torch::manual_seed(seed_);
  }

  const uint64_t seed_;
  const torch::Device device_{torch::kCUDA};
};

TEST_F(FusedOpsGpuTest, RmsNormWithinTwiceTheCompositeErrorInEveryPrecision) {
  CHUNKFLOW_SKIP_WITHOUT_CUDA();
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{3, 7}, {37, 1000}, {1000, 4099}, {4096, 2048}};
  for (const auto& [rows, hidden] : shapes) {
    for (const auto dtype : {torch::kFloat, torch::kBFloat16, torch::kHalf}) {
      const auto options = torch::TensorOptions().device(device_);
      const auto x = (torch::randn({rows, hidden}, options) * torch::exp(torch::randn({rows, 1}, options))).to(dtype);
      const auto weight = (1.0 + 0.5 * torch::randn({hidden}, options)).to(dtype);
      const auto dout = torch::randn({rows, hidden}, options).to(dtype);
      const std::string label = std::string(dtype_name(dtype)) + " rms_norm [" + std::to_string(rows) + ", " +
                                std::to_string(hidden) + "]";
      const auto fused = [](const std::vector<torch::Tensor>& in) { return rms_norm(in[0], in[1], 1e-5); };
      const auto plain = [](const std::vector<torch::Tensor>& in) { return rms_norm_composite(in[0], in[1], 1e-5); };
      const Result ours = run(fused, {x, weight}, dout);
      const Result composite = run(plain, {x, weight}, dout);
      const Result reference = run(plain, {x.to(torch::kDouble), weight.to(torch::kDouble)}, dout);
      EXPECT_EQ(ours.out.scalar_type(), dtype);
      expect_within_rule(ours.out, composite.out, reference.out, kOutputFactor, kFloor, label + " out");
      expect_within_rule(ours.first, composite.first, reference.first, kGradientFactor, kFloor, label + " dx");
      expect_within_rule(ours.second, composite.second, reference.second, kGradientFactor, kFloor,
                         label + " dweight");
    }
  }
}

TEST_F(FusedOpsGpuTest, RotaryWithinTwiceTheCompositeErrorInEveryPrecision) {
  CHUNKFLOW_SKIP_WITHOUT_CUDA();
  struct Shape {
    int64_t tokens, heads, head_dim;
    double theta;
    RopeScaling scaling;
  };
  RopeScaling yarn;  // cos and sin scaled by 0.1 ln(4) + 1
  yarn.type = "yarn";
  yarn.factor = 4.0;
  const std::vector<Shape> shapes = {{1, 1, 2, 10000.0, {}}, {37, 4, 64, 10000.0, {}}, {513, 3, 6, 500000.0, {}},
                                     {1000, 8, 128, 1000000.0, yarn}};
  for (const Shape& shape : shapes) {
    const RopeFrequencies frequencies = rope_frequencies(shape.theta, shape.head_dim, 64, shape.scaling);
    for (const auto dtype : {torch::kFloat, torch::kBFloat16, torch::kHalf}) {
      const auto options = torch::TensorOptions().device(device_);
      const auto x = torch::randn({shape.tokens, shape.heads, shape.head_dim}, options).to(dtype);
      const auto positions = torch::randint(0, 256, {shape.tokens}, options.dtype(torch::kLong));
      const auto dout = torch::randn_like(x, options.dtype(torch::kFloat)).to(dtype);
      const std::string label = std::string(dtype_name(dtype)) + " rotary [" + std::to_string(shape.tokens) + ", " +
                                std::to_string(shape.heads) + ", " + std::to_string(shape.head_dim) + "]";
      const auto inv_freq = rope_inv_freq(frequencies, device_);
      const double scaling = frequencies.attention_scaling;
      const Result ours = run(
          [&](const std::vector<torch::Tensor>& in) { return apply_rotary(in[0], positions, inv_freq, scaling); }, {x},
          dout);
      const auto composite_with = [&](torch::ScalarType table_dtype) {
        return [&, table_dtype](const std::vector<torch::Tensor>& in) {
          return rotary_composite(in[0], positions, frequencies, table_dtype);
        };
      };
      const Result composite = run(composite_with(torch::kFloat), {x}, dout);
      const Result reference = run(composite_with(torch::kDouble), {x.to(torch::kDouble)}, dout);
      expect_within_rule(ours.out, composite.out, reference.out, kOutputFactor, kRotaryFloor, label + " out");
      expect_within_rule(ours.first, composite.first, reference.first, kGradientFactor, kRotaryFloor, label + " dx");
    }
  }
}

TEST_F(FusedOpsGpuTest, SwigluWithinTwiceTheCompositeErrorInEveryPrecision) {
  CHUNKFLOW_SKIP_WITHOUT_CUDA();
  for (const int64_t elements : {int64_t{1}, int64_t{7 * 333}, int64_t{100003}, int64_t{4096} * 5632}) {
    for (const auto dtype : {torch::kFloat, torch::kBFloat16, torch::kHalf}) {
      const auto options = torch::TensorOptions().device(device_);
      const auto gate = (torch::randn({elements}, options) * 4.0).to(dtype);
      const auto up = torch::randn({elements}, options).to(dtype);
      const auto dout = torch::randn({elements}, options).to(dtype);
      const std::string label = std::string(dtype_name(dtype)) + " swiglu " + std::to_string(elements);
      const auto fused = [](const std::vector<torch::Tensor>& in) { return swiglu(in[0], in[1]); };
      const auto plain = [](const std::vector<torch::Tensor>& in) { return torch::silu(in[0]) * in[1]; };
      const Result ours = run(fused, {gate, up}, dout);
      const Result composite = run(plain, {gate, up}, dout);
      const Result reference = run(plain, {gate.to(torch::kDouble), up.to(torch::kDouble)}, dout);
      expect_within_rule(ours.out, composite.out, reference.out, kOutputFactor, kFloor, label + " out");
      expect_within_rule(ours.first, composite.first, reference.first, kGradientFactor, kFloor, label + " dgate");
      expect_within_rule(ours.second, composite.second, reference.second, kGradientFactor, kFloor, label + " dup");
    }
  }
}

TEST_F(FusedOpsGpuTest, LaunchersFillNaNPoisonedBuffersAndTheWeightGradientIsDeterministic) {
  CHUNKFLOW_SKIP_WITHOUT_CUDA();
#ifdef CHUNKFLOW_WITH_CUDA
  void* stream = c10::cuda::getCurrentCUDAStream().stream();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const int64_t rows = 777, hidden = 1531;
  for (const auto dtype : {torch::kFloat, torch::kBFloat16, torch::kHalf}) {
    const auto options = torch::TensorOptions().device(device_).dtype(dtype);
    const ScalarType kernel_dtype = dtype == torch::kFloat      ? ScalarType::kFloat32
                                    : dtype == torch::kBFloat16 ? ScalarType::kBFloat16
                                                                : ScalarType::kFloat16;
    const auto x = torch::randn({rows, hidden}, options);
    const auto weight = torch::randn({hidden}, options);
    const auto dout = torch::randn({rows, hidden}, options);
    auto out = torch::full({rows, hidden}, nan, options);
    auto rstd = torch::full({rows}, nan, options.dtype(torch::kFloat));
    RmsNormParams forward;
    forward.x = x.data_ptr();
    forward.weight = weight.data_ptr();
    forward.out = out.data_ptr();
    forward.rstd = rstd.data_ptr<float>();
    forward.rows = rows;
    forward.hidden = hidden;
    forward.dtype = kernel_dtype;
    rms_norm_forward_cuda(forward, stream);

    std::vector<torch::Tensor> weight_gradients;
    for (int repeat = 0; repeat < 2; ++repeat) {
      auto dx = torch::full({rows, hidden}, nan, options);
      auto dweight = torch::full({hidden}, nan, options);
      auto workspace = torch::full({rms_norm_weight_partials(rows), hidden}, nan, options.dtype(torch::kFloat));
      RmsNormBackwardParams backward;
      backward.x = x.data_ptr();
      backward.weight = weight.data_ptr();
      backward.rstd = rstd.data_ptr<float>();
      backward.dout = dout.data_ptr();
      backward.dx = dx.data_ptr();
      backward.dweight = dweight.data_ptr();
      backward.dweight_workspace = workspace.data_ptr<float>();
      backward.rows = rows;
      backward.hidden = hidden;
      backward.dtype = kernel_dtype;
      rms_norm_backward_cuda(backward, stream);
      EXPECT_FALSE(torch::isnan(dx).any().item<bool>()) << dtype_name(dtype) << " rms_norm dx";
      weight_gradients.push_back(dweight);
    }
    EXPECT_FALSE(torch::isnan(out).any().item<bool>()) << dtype_name(dtype) << " rms_norm out";
    EXPECT_FALSE(torch::isnan(rstd).any().item<bool>()) << dtype_name(dtype) << " rms_norm rstd";
    EXPECT_FALSE(torch::isnan(weight_gradients[0]).any().item<bool>()) << dtype_name(dtype) << " dweight";
    EXPECT_TRUE(torch::equal(weight_gradients[0], weight_gradients[1]))
        << dtype_name(dtype) << " dweight differs between identical runs";

    const auto q = torch::randn({rows, 3, 10}, options);
    const auto positions = torch::randint(0, 100000, {rows}, options.dtype(torch::kLong));
    auto rotated = torch::full_like(q, nan);
    RotaryParams rotary;
    rotary.in = q.data_ptr();
    rotary.positions = positions.data_ptr<int64_t>();
    rotary.out = rotated.data_ptr();
    rotary.tokens = rows;
    rotary.heads = 3;
    rotary.head_dim = 10;
    rotary.dtype = kernel_dtype;
    rotary_cuda(rotary, stream);
    EXPECT_FALSE(torch::isnan(rotated).any().item<bool>()) << dtype_name(dtype) << " rotary out";

    auto glu = torch::full_like(x, nan), dgate = torch::full_like(x, nan), dup = torch::full_like(x, nan);
    SwigluParams glu_forward;
    glu_forward.gate = x.data_ptr();
    glu_forward.up = dout.data_ptr();
    glu_forward.out = glu.data_ptr();
    glu_forward.elements = x.numel();
    glu_forward.dtype = kernel_dtype;
    swiglu_forward_cuda(glu_forward, stream);
    SwigluBackwardParams glu_backward;
    glu_backward.gate = x.data_ptr();
    glu_backward.up = dout.data_ptr();
    glu_backward.dout = x.data_ptr();
    glu_backward.dgate = dgate.data_ptr();
    glu_backward.dup = dup.data_ptr();
    glu_backward.elements = x.numel();
    glu_backward.dtype = kernel_dtype;
    swiglu_backward_cuda(glu_backward, stream);
    EXPECT_FALSE(torch::isnan(glu).any().item<bool>()) << dtype_name(dtype) << " swiglu out";
    EXPECT_FALSE(torch::isnan(dgate).any().item<bool>()) << dtype_name(dtype) << " swiglu dgate";
    EXPECT_FALSE(torch::isnan(dup).any().item<bool>()) << dtype_name(dtype) << " swiglu dup";
  }
#else
  FAIL() << "a CUDA device is visible but this build has no CUDA kernels (CHUNKFLOW_WITH_CUDA unset)";
#endif
}

TEST_F(FusedOpsGpuTest, AdaptersOnCudaRejectMixedDevicesAndFloat64) {
  CHUNKFLOW_SKIP_WITHOUT_CUDA();
  const auto x = torch::randn({4, 2, 8}, torch::TensorOptions().device(device_));
  const auto message = [](const auto& call) {
    try {
      call();
    } catch (const core::Error& error) {
      return std::string(error.what());
    }
    return std::string("<no error thrown>");
  };
  const auto inv_freq = rope_inv_freq(rope_frequencies(1e4, 8, 64, RopeScaling{}), device_);
  EXPECT_NE(message([&] { apply_rotary(x, torch::arange(4, torch::kLong), inv_freq); })
                .find("apply_rotary: positions must be on x's device"),
            std::string::npos);
  EXPECT_NE(message([&] { rms_norm(x, torch::ones({8}), 1e-6); }).find("rms_norm: weight is on cpu but x is on cuda"),
            std::string::npos);
  EXPECT_NE(message([&] { swiglu(x.to(torch::kDouble), x.to(torch::kDouble)); })
                .find("swiglu: the CUDA path takes float32, bfloat16 or float16, got gate Double"),
            std::string::npos);
}

}  // namespace
}  // namespace chunkflow::kernels
