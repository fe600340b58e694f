// Fused RMSNorm, rotary embedding and SwiGLU on the CPU (launchers and torch adapters) against
// independent float64 references written with plain torch ops, gradients through float64
// autograd. Odd sizes, fresh random data every run; the seed is printed (CHUNKFLOW_TEST_SEED
// replays it).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/random.h"
#include "kernels/fused_ops.h"
#include "kernels/fused_ops_torch.h"
#include "tests/support/test_seed.h"

namespace chunkflow::kernels {
namespace {

// fp32 kernel vs float64 reference: max |error| relative to max |reference| of each tensor.
constexpr double kTolerance = 1e-5;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

using chunkflow::testing::pick_seed;

// Max |actual - expected| relative to `magnitude` (default: max |expected|); NaN anywhere in
// actual fails.
double relative_error(const torch::Tensor& actual, const torch::Tensor& expected,
                      const std::string& what, double magnitude = 0.0) {
  EXPECT_EQ(actual.sizes(), expected.sizes()) << what;
  if (actual.sizes() != expected.sizes()) return std::numeric_limits<double>::infinity();
  EXPECT_FALSE(torch::isnan(actual).any().item<bool>()) << what << " holds NaN";
  if (expected.numel() == 0) return 0.0;
  const double error = (actual.to(torch::kDouble) - expected).abs().max().item<double>();
  if (magnitude <= 0.0) magnitude = expected.abs().max().item<double>();
  return magnitude > 0.0 ? error / magnitude : error;
}

void expect_close(const torch::Tensor& actual, const torch::Tensor& expected,
                  const std::string& what, double tolerance = kTolerance, double magnitude = 0.0) {
  const double error = relative_error(actual, expected, what, magnitude);
  std::cout << "[ rel err  ] " << what << ": " << error << "\n";
  EXPECT_LE(error, tolerance) << what;
}

// RMSNorm's dx = rstd * (g - x_hat * mean(g * x_hat)) with g = dout * weight cancels almost
// completely when hidden is tiny (x_hat^2 ~ 1 for hidden 1): fp32 rounding is relative to the
// terms, so dx is compared against the size of rstd * g.
double rms_norm_dx_magnitude(const torch::Tensor& x, const torch::Tensor& weight, double eps,
                             const torch::Tensor& dout) {
  const auto x64 = x.to(torch::kDouble);
  const auto rstd = torch::rsqrt(x64.square().mean(-1, true) + eps);
  return (rstd * dout.to(torch::kDouble) * weight.to(torch::kDouble)).abs().max().item<double>();
}

std::string error_of(const std::function<void()>& call) {
  try {
    call();
  } catch (const core::Error& error) {
    return error.what();
  }
  return "<no error thrown>";
}

::testing::AssertionResult contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << text << "\" lacks \"" << part << "\"";
}

torch::Tensor nan_like(const torch::Tensor& tensor) { return torch::full_like(tensor, kNaN); }

// ---- references (float64) ----------------------------------------------------------------------

struct Gradients {
  torch::Tensor out, first, second;  // the output and the gradients of the two inputs
};

Gradients rms_norm_reference(const torch::Tensor& x, const torch::Tensor& weight, double eps,
                             const torch::Tensor& dout) {
  const auto x64 = x.detach().to(torch::kDouble).requires_grad_();
  const auto w64 = weight.detach().to(torch::kDouble).requires_grad_();
  const auto out = w64 * (x64 / torch::sqrt(x64.square().mean(-1, true) + eps));
  out.backward(dout.to(torch::kDouble));
  return {out.detach(), x64.grad(), w64.grad()};
}

// The angles the contract fixes: fp32 position * inv_freq, as Hugging Face's tables;
// [tokens, head_dim / 2] float64 holding those fp32 values. Everything after the angle is float64.
torch::Tensor contract_angles(const torch::Tensor& positions, const RopeFrequencies& frequencies) {
  const auto inv_freq = torch::tensor(frequencies.inv_freq, torch::kFloat);
  return (positions.to(torch::kFloat).unsqueeze(1) * inv_freq.unsqueeze(0)).to(torch::kDouble);
}

RopeFrequencies plain_rope(double theta, int64_t head_dim) {
  return rope_frequencies(theta, head_dim, /*max_position_embeddings=*/4096, RopeScaling{});
}

Gradients rotary_reference(const torch::Tensor& x, const torch::Tensor& positions, const RopeFrequencies& frequencies,
                           const torch::Tensor& dout) {
  const int64_t half = x.size(2) / 2;
  const auto x64 = x.detach().to(torch::kDouble).requires_grad_();
  const auto angles = contract_angles(positions, frequencies).unsqueeze(1);  // [t, 1, half]
  const double scaling = frequencies.attention_scaling;
  const auto cos = angles.cos() * scaling, sin = angles.sin() * scaling;
  const auto first = x64.narrow(2, 0, half), second = x64.narrow(2, half, half);
  const auto out = torch::cat({first * cos - second * sin, second * cos + first * sin}, 2);
  out.backward(dout.to(torch::kDouble));
  return {out.detach(), x64.grad(), torch::Tensor()};
}

Gradients swiglu_reference(const torch::Tensor& gate, const torch::Tensor& up,
                           const torch::Tensor& dout) {
  const auto g64 = gate.detach().to(torch::kDouble).requires_grad_();
  const auto u64 = up.detach().to(torch::kDouble).requires_grad_();
  const auto out = g64 * torch::sigmoid(g64) * u64;
  out.backward(dout.to(torch::kDouble));
  return {out.detach(), g64.grad(), u64.grad()};
}

// ---- the adapters through autograd --------------------------------------------------------------

Gradients rms_norm_adapter(const torch::Tensor& x, const torch::Tensor& weight, double eps,
                           const torch::Tensor& dout) {
  const auto leaf_x = x.detach().clone().requires_grad_();
  const auto leaf_w = weight.detach().clone().requires_grad_();
  const auto out = rms_norm(leaf_x, leaf_w, eps);
  out.backward(dout);
  return {out.detach(), leaf_x.grad(), leaf_w.grad()};
}

Gradients rotary_adapter(const torch::Tensor& x, const torch::Tensor& positions, const RopeFrequencies& frequencies,
                         const torch::Tensor& dout) {
  const auto leaf = x.detach().clone().requires_grad_();
  const auto out = apply_rotary(leaf, positions, rope_inv_freq(frequencies), frequencies.attention_scaling);
  out.backward(dout);
  return {out.detach(), leaf.grad(), torch::Tensor()};
}

Gradients swiglu_adapter(const torch::Tensor& gate, const torch::Tensor& up,
                         const torch::Tensor& dout) {
  const auto leaf_gate = gate.detach().clone().requires_grad_();
  const auto leaf_up = up.detach().clone().requires_grad_();
  const auto out = swiglu(leaf_gate, leaf_up);
  out.backward(dout);
  return {out.detach(), leaf_gate.grad(), leaf_up.grad()};
}

// ---- the raw launchers over NaN-poisoned buffers -------------------------------------------------

struct RmsNormLaunch {
  torch::Tensor out, rstd, dx, dweight;
};

// x [rows, hidden] float32 contiguous.
RmsNormLaunch rms_norm_launchers(const torch::Tensor& x, const torch::Tensor& weight, float eps,
                                 const torch::Tensor& dout) {
  const int64_t rows = x.size(0), hidden = x.size(1);
  RmsNormLaunch result{nan_like(x), torch::full({rows}, kNaN), nan_like(x), nan_like(weight)};
  RmsNormParams forward;
  forward.x = x.data_ptr();
  forward.weight = weight.data_ptr();
  forward.out = result.out.data_ptr();
  forward.rstd = result.rstd.data_ptr<float>();
  forward.rows = rows;
  forward.hidden = hidden;
  forward.eps = eps;
  rms_norm_forward_cpu(forward);

  torch::Tensor workspace = torch::full({rms_norm_weight_partials(rows), hidden}, kNaN);
  RmsNormBackwardParams backward;
  backward.x = x.data_ptr();
  backward.weight = weight.data_ptr();
  backward.rstd = result.rstd.data_ptr<float>();
  backward.dout = dout.data_ptr();
  backward.dx = result.dx.data_ptr();
  backward.dweight = result.dweight.data_ptr();
  backward.dweight_workspace = workspace.data_ptr<float>();
  backward.rows = rows;
  backward.hidden = hidden;
  rms_norm_backward_cpu(backward);
  return result;
}

// Forward (x -> out) and inverse (dout -> dx) rotations into NaN-filled buffers.
std::pair<torch::Tensor, torch::Tensor> rotary_launchers(const torch::Tensor& x,
                                                         const torch::Tensor& positions,
                                                         const RopeFrequencies& frequencies,
                                                         const torch::Tensor& dout) {
  torch::Tensor out = nan_like(x), dx = nan_like(x);
  RotaryParams params;
  params.in = x.data_ptr();
  params.positions = positions.data_ptr<int64_t>();
  params.inv_freq = frequencies.inv_freq.data();
  params.attention_scaling = frequencies.attention_scaling;
  params.out = out.data_ptr();
  params.tokens = x.size(0);
  params.heads = x.size(1);
  params.head_dim = x.size(2);
  rotary_cpu(params);
  params.in = dout.data_ptr();
  params.out = dx.data_ptr();
  params.inverse = true;
  rotary_cpu(params);
  return {out, dx};
}

Gradients swiglu_launchers(const torch::Tensor& gate, const torch::Tensor& up,
                           const torch::Tensor& dout) {
  Gradients result{nan_like(gate), nan_like(gate), nan_like(up)};
  SwigluParams forward;
  forward.gate = gate.data_ptr();
  forward.up = up.data_ptr();
  forward.out = result.out.data_ptr();
  forward.elements = gate.numel();
  swiglu_forward_cpu(forward);
  SwigluBackwardParams backward;
  backward.gate = gate.data_ptr();
  backward.up = up.data_ptr();
  backward.dout = dout.data_ptr();
  backward.dgate = result.first.data_ptr();
  backward.dup = result.second.data_ptr();
  backward.elements = gate.numel();
  swiglu_backward_cpu(backward);
  return result;
}

class FusedOpsTest : public ::testing::Test {
 protected:
  FusedOpsTest() : seed_(pick_seed()), rng_(seed_) {
    std::cout << "[ seed     ] " << seed_ << " (replay with CHUNKFLOW_TEST_SEED=" << seed_ << ")\n";
    RecordProperty("seed", std::to_string(seed_));
    torch::manual_seed(seed_);
  }

  int64_t below(uint64_t bound) { return static_cast<int64_t>(rng_.below(bound)); }

  const uint64_t seed_;
  core::Rng rng_;
};

// ---- RMSNorm -----------------------------------------------------------------------------------

TEST_F(FusedOpsTest, RmsNormMatchesFloat64ReferenceAndGradientsOnOddShapes) {
  // Rows span several parallel tasks and more than 256 weight-gradient partials; hidden sizes
  // cross the 512-element summation blocks.
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {1, 1}, {3, 7}, {17, 511}, {33, 513}, {300, 1000}, {1 + below(700), 1 + below(3000)}};
  for (const auto& [rows, hidden] : shapes) {
    // Rows of very different scales: the normalization must remove them.
    const auto x = torch::randn({rows, hidden}) * torch::exp(torch::randn({rows, 1}) * 2.0);
    const auto weight = torch::randn({hidden});
    const auto dout = torch::randn({rows, hidden});
    const double eps = rows % 2 == 0 ? 1e-6 : 1e-5;
    const std::string label = "rms_norm [" + std::to_string(rows) + ", " + std::to_string(hidden) + "]";
    const Gradients expected = rms_norm_reference(x, weight, eps, dout);
    const Gradients adapter = rms_norm_adapter(x, weight, eps, dout);
    expect_close(adapter.out, expected.out, label + " out");
    const double dx_magnitude = rms_norm_dx_magnitude(x, weight, eps, dout);
    expect_close(adapter.first, expected.first, label + " dx", kTolerance, dx_magnitude);
    expect_close(adapter.second, expected.second, label + " dweight");

    const RmsNormLaunch launch = rms_norm_launchers(x, weight, static_cast<float>(eps), dout);
    expect_close(launch.out, expected.out, label + " launcher out");
    expect_close(launch.dx, expected.first, label + " launcher dx", kTolerance, dx_magnitude);
    expect_close(launch.dweight, expected.second, label + " launcher dweight");
    const auto x64 = x.to(torch::kDouble);
    expect_close(launch.rstd, torch::rsqrt(x64.square().mean(-1) + eps), label + " launcher rstd");
  }
}

TEST_F(FusedOpsTest, RmsNormTakesAnyLeadingShapeAndAFrozenWeight) {
  const int64_t hidden = 1 + below(300);
  const auto x = torch::randn({2, 1 + below(50), hidden});
  const auto weight = torch::randn({hidden});
  const auto dout = torch::randn_like(x);
  const Gradients expected = rms_norm_reference(x, weight, 1e-6, dout);
  const auto leaf = x.clone().requires_grad_();
  const auto out = rms_norm(leaf, weight, 1e-6);  // weight does not require grad
  out.backward(dout);
  expect_close(out.detach(), expected.out, "rms_norm 3-d out");
  expect_close(leaf.grad(), expected.first, "rms_norm 3-d dx", kTolerance,
               rms_norm_dx_magnitude(x, weight, 1e-6, dout));
  EXPECT_FALSE(weight.grad().defined());
}

TEST_F(FusedOpsTest, RmsNormOfNoRowsGivesAZeroWeightGradient) {
  const auto x = torch::randn({0, 9}).requires_grad_();
  const auto weight = torch::randn({9}).requires_grad_();
  const auto out = rms_norm(x, weight, 1e-6);
  EXPECT_EQ(out.sizes(), x.sizes());
  out.sum().backward();
  ASSERT_TRUE(weight.grad().defined());
  EXPECT_TRUE(torch::equal(weight.grad(), torch::zeros({9})));
}

TEST_F(FusedOpsTest, RmsNormRowsAndWeightGradientDoNotDependOnTheThreadCount) {
  const int64_t rows = 1000 + below(500), hidden = 256 + below(256);
  const auto x = torch::randn({rows, hidden});
  const auto weight = torch::randn({hidden});
  const auto dout = torch::randn({rows, hidden});
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const RmsNormLaunch one = rms_norm_launchers(x, weight, 1e-6f, dout);
  at::set_num_threads(2);
  const RmsNormLaunch two = rms_norm_launchers(x, weight, 1e-6f, dout);
  at::set_num_threads(threads);
  EXPECT_TRUE(torch::equal(one.out, two.out));
  EXPECT_TRUE(torch::equal(one.dx, two.dx));
  EXPECT_TRUE(torch::equal(one.dweight, two.dweight));
  // A row's output depends on that row only: rows computed in a smaller call are bit-identical.
  const int64_t first = below(static_cast<uint64_t>(rows - 10)), count = 1 + below(9);
  const auto slice = x.narrow(0, first, count).contiguous();
  const RmsNormLaunch part = rms_norm_launchers(slice, weight, 1e-6f, dout.narrow(0, first, count).contiguous());
  EXPECT_TRUE(torch::equal(part.out, one.out.narrow(0, first, count)));
  EXPECT_TRUE(torch::equal(part.dx, one.dx.narrow(0, first, count)));
}

// ---- rotary ------------------------------------------------------------------------------------

TEST_F(FusedOpsTest, RotaryMatchesFloat64ReferenceWithPerTokenPositions) {
  struct Shape {
    int64_t tokens, heads, head_dim;
    double theta;
    RopeScaling scaling;
  };
  RopeScaling yarn;  // attention scaling 0.1 ln(8) + 1 = 1.208: the scaled rotation and its inverse
  yarn.type = "yarn";
  yarn.factor = 8.0;
  RopeScaling llama3;
  llama3.type = "llama3";
  llama3.factor = 8.0;
  llama3.original_max_position_embeddings = 8192;
  const std::vector<Shape> shapes = {{1, 1, 2, 10000.0, {}},
                                     {5, 3, 6, 10000.0, {}},
                                     {37, 4, 64, 500000.0, yarn},
                                     {129, 2, 128, 1000000.0, llama3},
                                     {1 + below(300), 1 + below(8), 2 * (1 + below(80)), 10000.0, {}}};
  for (const Shape& shape : shapes) {
    const RopeFrequencies frequencies = rope_frequencies(shape.theta, shape.head_dim, 4096, shape.scaling);
    const auto x = torch::randn({shape.tokens, shape.heads, shape.head_dim});
    // Unordered positions with repeats, up to long-context values where fp32 angles matter.
    const auto positions = torch::randint(0, 131072, {shape.tokens}, torch::kLong);
    const auto dout = torch::randn_like(x);
    const std::string label = "rotary [" + std::to_string(shape.tokens) + ", " +
                              std::to_string(shape.heads) + ", " + std::to_string(shape.head_dim) +
                              "] theta " + std::to_string(shape.theta) + " " + shape.scaling.type;
    const Gradients expected = rotary_reference(x, positions, frequencies, dout);
    const Gradients adapter = rotary_adapter(x, positions, frequencies, dout);
    expect_close(adapter.out, expected.out, label + " out");
    expect_close(adapter.first, expected.first, label + " dx");
    const auto [out, dx] = rotary_launchers(x, positions, frequencies, dout);
    expect_close(out, expected.out, label + " launcher out");
    expect_close(dx, expected.first, label + " launcher dx");
  }
}

TEST_F(FusedOpsTest, RotaryRotatesFirstHalfAgainstSecondHalfAndKeepsPositionZero) {
  // Position 0 is the identity; position 1 turns pair (0, half) by exactly 1 radian (inv_freq 1).
  const auto x = torch::randn({2, 1, 8});
  const auto positions = torch::tensor({int64_t{0}, int64_t{1}}, torch::kLong);
  const auto out = apply_rotary(x, positions, rope_inv_freq(plain_rope(10000.0, 8)));
  EXPECT_TRUE(torch::equal(out[0], x[0]));
  const float first = x[1][0][0].item<float>(), second = x[1][0][4].item<float>();
  EXPECT_NEAR(out[1][0][0].item<float>(), first * std::cos(1.0f) - second * std::sin(1.0f), 1e-6);
  EXPECT_NEAR(out[1][0][4].item<float>(), second * std::cos(1.0f) + first * std::sin(1.0f), 1e-6);
}

TEST_F(FusedOpsTest, RotaryOfATokenDependsOnItsPositionOnlyAndWorksInPlace) {
  const int64_t tokens = 50 + below(100), heads = 1 + below(4), head_dim = 2 * (1 + below(64));
  const auto x = torch::randn({tokens, heads, head_dim});
  const auto positions = torch::randint(0, 100000, {tokens}, torch::kLong);
  const auto dout = torch::randn_like(x);
  const RopeFrequencies frequencies = plain_rope(10000.0, head_dim);
  const auto [out, dx] = rotary_launchers(x, positions, frequencies, dout);
  const int64_t first = below(static_cast<uint64_t>(tokens - 5)), count = 1 + below(4);
  const auto [part_out, part_dx] =
      rotary_launchers(x.narrow(0, first, count).contiguous(), positions.narrow(0, first, count).contiguous(),
                       frequencies, dout.narrow(0, first, count).contiguous());
  EXPECT_TRUE(torch::equal(part_out, out.narrow(0, first, count)));
  EXPECT_TRUE(torch::equal(part_dx, dx.narrow(0, first, count)));

  // out == in: every pair is read before it is written.
  torch::Tensor in_place = x.clone();
  RotaryParams params;
  params.in = in_place.data_ptr();
  params.positions = positions.data_ptr<int64_t>();
  params.inv_freq = frequencies.inv_freq.data();
  params.out = in_place.data_ptr();
  params.tokens = tokens;
  params.heads = heads;
  params.head_dim = head_dim;
  rotary_cpu(params);
  EXPECT_TRUE(torch::equal(in_place, out));
}

// ---- SwiGLU ------------------------------------------------------------------------------------

TEST_F(FusedOpsTest, SwigluMatchesFloat64ReferenceAndGradientsIncludingSaturatedGates) {
  const std::vector<std::vector<int64_t>> shapes = {
      {1}, {7, 333}, {3, 5, 1001}, {100003}, {1 + below(50), 1 + below(5000)}};
  for (const auto& shape : shapes) {
    auto gate = torch::randn(shape) * 4.0;
    // Gates far in both tails (exp(-g) overflows to inf or underflows to 0 there), next to
    // ordinary ones that set the error scale.
    if (gate.numel() > 2) {
      gate.view({-1}).narrow(0, 0, 1).fill_(-100.0);
      gate.view({-1}).narrow(0, 1, 1).fill_(90.0);
    }
    const auto up = torch::randn(shape);
    const auto dout = torch::randn(shape);
    const std::string label = "swiglu " + std::to_string(gate.numel()) + " elements";
    const Gradients expected = swiglu_reference(gate, up, dout);
    const Gradients adapter = swiglu_adapter(gate, up, dout);
    expect_close(adapter.out, expected.out, label + " out");
    expect_close(adapter.first, expected.first, label + " dgate");
    expect_close(adapter.second, expected.second, label + " dup");
    const Gradients launch = swiglu_launchers(gate, up, dout);
    expect_close(launch.out, expected.out, label + " launcher out");
    expect_close(launch.first, expected.first, label + " launcher dgate");
    expect_close(launch.second, expected.second, label + " launcher dup");
  }
}

TEST_F(FusedOpsTest, SwigluGivesTheCompositesInfinitiesAndNaNsAtSpecialGates) {
  const float inf = std::numeric_limits<float>::infinity();
  // Around exp's overflow (|g| ~ 88.7) and underflow (~ 87.3) thresholds, and non-finite gates.
  const auto gate = torch::tensor({0.0f, -0.0f, 87.3f, 87.4f, -87.3f, -87.4f, 88.7f, 88.8f, -88.7f,
                                   -88.8f, 1e-30f, inf, -inf, kNaN});
  const auto up = torch::full_like(gate, 1.5f);
  const auto dout = torch::full_like(gate, -0.75f);
  const Gradients ours = swiglu_launchers(gate, up, dout);
  const auto leaf = gate.clone().requires_grad_();
  const auto leaf_up = up.clone().requires_grad_();
  const auto composite = torch::silu(leaf) * leaf_up;
  composite.backward(dout);
  for (const auto& [name, actual, expected] :
       {std::tuple{"out", ours.out, composite.detach()}, std::tuple{"dgate", ours.first, leaf.grad()},
        std::tuple{"dup", ours.second, leaf_up.grad()}}) {
    EXPECT_TRUE(torch::allclose(actual, expected, 1e-6, /*atol=*/0.0, /*equal_nan=*/true))
        << name << ": ours " << actual << "\ncomposite " << expected;
  }
}

// ---- paths, poisoned buffers and errors -------------------------------------------------------

TEST_F(FusedOpsTest, LaunchersWriteEveryElementOfNaNPoisonedBuffers) {
  const int64_t rows = 300 + below(100), hidden = 1 + below(100);
  const auto x = torch::randn({rows, hidden});
  const RmsNormLaunch norm = rms_norm_launchers(x, torch::randn({hidden}), 1e-6f, torch::randn_like(x));
  for (const auto& [name, tensor] : {std::pair{"out", norm.out}, std::pair{"rstd", norm.rstd},
                                     std::pair{"dx", norm.dx}, std::pair{"dweight", norm.dweight}}) {
    EXPECT_FALSE(torch::isnan(tensor).any().item<bool>()) << "rms_norm " << name << " kept a poisoned element";
  }
  const auto q = torch::randn({rows, 3, 10});
  const auto [out, dx] = rotary_launchers(q, torch::randint(0, 5000, {rows}, torch::kLong), plain_rope(10000.0, 10),
                                          torch::randn_like(q));
  EXPECT_FALSE(torch::isnan(out).any().item<bool>()) << "rotary out kept a poisoned element";
  EXPECT_FALSE(torch::isnan(dx).any().item<bool>()) << "rotary dx kept a poisoned element";
  const auto gate = torch::randn({rows, hidden});
  const Gradients glu = swiglu_launchers(gate, torch::randn_like(gate), torch::randn_like(gate));
  for (const auto& [name, tensor] : {std::pair{"out", glu.out}, std::pair{"dgate", glu.first},
                                     std::pair{"dup", glu.second}}) {
    EXPECT_FALSE(torch::isnan(tensor).any().item<bool>()) << "swiglu " << name << " kept a poisoned element";
  }
}

TEST_F(FusedOpsTest, Float64TensorsTakeTheCompositePathWithTheSameResults) {
  const auto x = torch::randn({13, 3, 16}, torch::kDouble);
  const auto positions = torch::randint(0, 64, {13}, torch::kLong);
  const auto dout = torch::randn_like(x);
  const Gradients rotated = rotary_adapter(x, positions, plain_rope(10000.0, x.size(2)), dout);
  const Gradients rotated_expected = rotary_reference(x, positions, plain_rope(10000.0, x.size(2)), dout);
  expect_close(rotated.out, rotated_expected.out, "float64 rotary out");
  expect_close(rotated.first, rotated_expected.first, "float64 rotary dx");

  const auto hidden = x.view({13, 48});
  const auto weight = torch::randn({48}, torch::kDouble);
  const auto hidden_dout = torch::randn_like(hidden);
  const Gradients normed = rms_norm_adapter(hidden, weight, 1e-6, hidden_dout);
  const Gradients normed_expected = rms_norm_reference(hidden, weight, 1e-6, hidden_dout);
  // float64 is normalized in float64 (the composite computes in at least fp32).
  expect_close(normed.out, normed_expected.out, "float64 rms_norm out", 1e-12);
  expect_close(normed.first, normed_expected.first, "float64 rms_norm dx", 1e-12);
  expect_close(normed.second, normed_expected.second, "float64 rms_norm dweight", 1e-12);

  const Gradients glu = swiglu_adapter(hidden, hidden_dout, hidden * 0.5);
  const Gradients glu_expected = swiglu_reference(hidden, hidden_dout, hidden * 0.5);
  expect_close(glu.out, glu_expected.out, "float64 swiglu out", 1e-12);
  expect_close(glu.first, glu_expected.first, "float64 swiglu dgate", 1e-12);
  EXPECT_EQ(glu.out.scalar_type(), torch::kDouble);
}

TEST_F(FusedOpsTest, CheckParamsQuoteTheBrokenRule) {
  std::vector<float> buffer(64, 1.0f), rstd(4);
  std::vector<int64_t> positions(4, 0);

  RmsNormParams norm;
  norm.x = buffer.data();
  norm.weight = buffer.data();
  norm.out = buffer.data();
  norm.rstd = rstd.data();
  norm.rows = 4;
  norm.hidden = 16;
  EXPECT_NO_THROW(check_params(norm));
  RmsNormParams broken = norm;
  broken.rstd = nullptr;
  EXPECT_TRUE(contains(error_of([&] { check_params(broken); }),
                       "rms_norm_forward: params.rstd [rows] must not be null when it has elements (4)"));
  broken = norm;
  broken.hidden = 0;
  EXPECT_TRUE(contains(error_of([&] { check_params(broken); }), "hidden must be > 0, got 0"));
  broken = norm;
  broken.eps = -1.0f;
  EXPECT_TRUE(contains(error_of([&] { check_params(broken); }), "eps must be finite and >= 0, got -1"));
  broken = norm;
  broken.dtype = ScalarType::kBFloat16;
  EXPECT_NO_THROW(check_params(broken));
  EXPECT_TRUE(contains(error_of([&] { rms_norm_forward_cpu(broken); }),
                       "rms_norm_forward_cpu: the CPU path takes float32, got bfloat16"));
  broken.dtype = static_cast<ScalarType>(7);
  EXPECT_TRUE(contains(error_of([&] { check_params(broken); }),
                       "dtype must be kFloat32, kBFloat16 or kFloat16, got ScalarType(7)"));

  RmsNormBackwardParams norm_backward;
  norm_backward.x = buffer.data();
  norm_backward.weight = buffer.data();
  norm_backward.rstd = rstd.data();
  norm_backward.dout = buffer.data();
  norm_backward.dx = buffer.data();
  norm_backward.dweight = buffer.data();
  norm_backward.rows = 4;
  norm_backward.hidden = 16;
  EXPECT_TRUE(contains(error_of([&] { check_params(norm_backward); }),
                       "rms_norm_backward: params.dweight_workspace [rms_norm_weight_partials(rows), "
                       "hidden] must not be null when it has elements (64)"));
  norm_backward.rows = 0;
  norm_backward.x = norm_backward.dout = norm_backward.dx = nullptr;
  norm_backward.rstd = nullptr;
  EXPECT_NO_THROW(check_params(norm_backward)) << "no rows: only weight and dweight are needed";

  RotaryParams rotary;
  rotary.in = buffer.data();
  rotary.inv_freq = buffer.data();
  rotary.out = buffer.data();
  rotary.positions = positions.data();
  rotary.tokens = 4;
  rotary.heads = 2;
  rotary.head_dim = 8;
  EXPECT_NO_THROW(check_params(rotary));
  RotaryParams broken_rotary = rotary;
  broken_rotary.head_dim = 7;
  EXPECT_TRUE(contains(error_of([&] { check_params(broken_rotary); }),
                       "rotary: head_dim must be even and > 0 (rotate-half pairs element i with "
                       "i + head_dim / 2), got 7"));
  broken_rotary = rotary;
  broken_rotary.attention_scaling = 0.0f;
  EXPECT_TRUE(contains(error_of([&] { check_params(broken_rotary); }),
                       "attention_scaling must be finite and > 0, got 0"));
  broken_rotary = rotary;
  broken_rotary.inv_freq = nullptr;
  EXPECT_TRUE(contains(error_of([&] { check_params(broken_rotary); }),
                       "rotary: params.inv_freq [head_dim / 2] must not be null"));
  broken_rotary = rotary;
  broken_rotary.positions = nullptr;
  EXPECT_TRUE(contains(error_of([&] { check_params(broken_rotary); }),
                       "rotary: params.positions [tokens] must not be null"));

  SwigluBackwardParams glu;
  glu.gate = glu.up = glu.dout = buffer.data();
  glu.dgate = buffer.data();
  glu.elements = 64;
  EXPECT_TRUE(contains(error_of([&] { check_params(glu); }),
                       "swiglu_backward: params.dup [elements] must not be null"));
  glu.elements = -1;
  EXPECT_TRUE(contains(error_of([&] { check_params(glu); }), "elements must be >= 0, got -1"));
}

TEST_F(FusedOpsTest, AdaptersRejectMismatchedTensorsNamingTensorAndRule) {
  const auto x = torch::randn({4, 3, 8});
  EXPECT_TRUE(contains(error_of([&] { rms_norm(x, torch::ones({7}), 1e-6); }),
                       "rms_norm: x must be [..., hidden] with hidden = weight.size(0) = 7, got [4, 3, 8]"));
  EXPECT_TRUE(contains(error_of([&] { rms_norm(x, torch::ones({8}, torch::kDouble), 1e-6); }),
                       "rms_norm: weight is Double but x is Float; the tensors must share a dtype"));
  EXPECT_TRUE(contains(error_of([&] { rms_norm(x, torch::ones({8}), -1.0); }),
                       "eps must be finite and >= 0, got -1"));
  EXPECT_TRUE(contains(error_of([&] { rms_norm(x.to(torch::kInt), torch::ones({8}, torch::kInt), 1e-6); }),
                       "rms_norm: x must be a floating-point tensor, got Int"));
  const auto positions = torch::arange(4, torch::kLong);
  const auto inv_freq = rope_inv_freq(plain_rope(1e4, 8));
  EXPECT_TRUE(contains(error_of([&] { apply_rotary(x.view({4, 24}), positions, inv_freq); }),
                       "apply_rotary: x must be [tokens, heads, head_dim] with head_dim even"));
  EXPECT_TRUE(contains(error_of([&] { apply_rotary(x.narrow(2, 0, 5), positions, inv_freq); }),
                       "got [4, 3, 5]"));
  EXPECT_TRUE(contains(error_of([&] { apply_rotary(x, positions.to(torch::kInt), inv_freq); }),
                       "apply_rotary: positions must be int64, got Int"));
  EXPECT_TRUE(contains(error_of([&] { apply_rotary(x, positions.narrow(0, 0, 3), inv_freq); }),
                       "positions must be [tokens] with tokens = x.size(0) = 4, got [3]"));
  EXPECT_TRUE(contains(error_of([&] { apply_rotary(x, positions, inv_freq, -5.0); }),
                       "attention_scaling must be finite and > 0, got -5"));
  EXPECT_TRUE(contains(error_of([&] { apply_rotary(x, positions, inv_freq.narrow(0, 0, 3)); }),
                       "apply_rotary: inv_freq must be [head_dim / 2] = [4] float32, got [3] Float"));
  EXPECT_TRUE(contains(error_of([&] { apply_rotary(x, positions, inv_freq.to(torch::kDouble)); }),
                       "inv_freq must be [head_dim / 2] = [4] float32, got [4] Double"));
  EXPECT_TRUE(contains(error_of([&] { swiglu(x, x.view({12, 8})); }),
                       "swiglu: gate and up must have the same shape, got gate [4, 3, 8] and up [12, 8]"));
  EXPECT_TRUE(contains(error_of([&] { swiglu(x, torch::Tensor()); }), "swiglu: up is an undefined tensor"));
}

}  // namespace
}  // namespace chunkflow::kernels
