// Fused CPU element-wise ops (kernels/fused_ops_torch.h) against the plain torch composites the
// model used before, on one 4096-token chunk of a hidden-2048 model (16 heads of 128, MLP 5632).
// Each benchmark times the fused op in its loop, then the composite for the same number of
// iterations in the same process, and reports fused_ms, composite_ms and speedup = composite /
// fused (per iteration, wall clock). The rotary
// composite gets its cos/sin tables precomputed outside the loop (the model shared one set per
// chunk across layers), so its time covers only the rotation.
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <chrono>
#include <functional>

#include "kernels/fused_ops_torch.h"

namespace {

constexpr int64_t kTokens = 4096;
constexpr int64_t kHidden = 2048;
constexpr int64_t kHeads = 16;
constexpr int64_t kHeadDim = 128;
constexpr int64_t kIntermediate = 5632;
constexpr double kEps = 1e-5;
constexpr double kTheta = 10000.0;

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Runs the benchmark loop over `fused`, then times `composite` for as many iterations and reports
// both per-iteration times and speedup = composite time / fused time.
void compare(benchmark::State& state, const std::function<void()>& fused, const std::function<void()>& composite) {
  const auto fused_start = Clock::now();
  for (auto _ : state) fused();
  const auto iterations = static_cast<double>(state.iterations());
  const double fused_seconds = seconds_since(fused_start) / iterations;
  const auto composite_start = Clock::now();
  for (int64_t i = 0; i < static_cast<int64_t>(state.iterations()); ++i) composite();
  const double composite_seconds = seconds_since(composite_start) / iterations;
  state.counters["fused_ms"] = fused_seconds * 1e3;
  state.counters["composite_ms"] = composite_seconds * 1e3;
  state.counters["speedup"] = composite_seconds / fused_seconds;
}

torch::Tensor rms_norm_composite(const torch::Tensor& x, const torch::Tensor& weight) {
  const torch::Tensor x32 = x.to(torch::kFloat32);
  const torch::Tensor normed = x32 * torch::rsqrt(x32.pow(2).mean(-1, true) + kEps);
  return weight * normed.to(x.scalar_type());
}

struct RotaryTables {
  torch::Tensor cos, sin;  // [tokens, 1, head_dim]
};

RotaryTables rotary_tables(const torch::Tensor& positions) {
  const auto exponents = torch::arange(0, kHeadDim, 2, torch::kLong).to(torch::kFloat32) / static_cast<double>(kHeadDim);
  const auto inv_freq = 1.0 / torch::pow(torch::tensor(kTheta, torch::kFloat32), exponents);
  const auto angles = positions.to(torch::kFloat32).unsqueeze(1) * inv_freq.unsqueeze(0);
  const auto doubled = torch::cat({angles, angles}, 1).unsqueeze(1);
  return {doubled.cos(), doubled.sin()};
}

torch::Tensor rotary_composite(const torch::Tensor& x, const RotaryTables& tables) {
  const int64_t half = kHeadDim / 2;
  const auto rotated = torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * tables.cos + rotated * tables.sin;
}

void BM_RmsNormForward(benchmark::State& state) {
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({kTokens, kHidden}), weight = torch::randn({kHidden});
  compare(state, [&] { benchmark::DoNotOptimize(chunkflow::kernels::rms_norm(x, weight, kEps)); },
          [&] { benchmark::DoNotOptimize(rms_norm_composite(x, weight)); });
}

void BM_RmsNormForwardBackward(benchmark::State& state) {
  const auto x = torch::randn({kTokens, kHidden}).requires_grad_();
  const auto weight = torch::randn({kHidden}).requires_grad_();
  const auto dout = torch::randn({kTokens, kHidden});
  const auto step = [&](const auto& op) {
    op().backward(dout);
    x.mutable_grad().reset();
    weight.mutable_grad().reset();
  };
  compare(state, [&] { step([&] { return chunkflow::kernels::rms_norm(x, weight, kEps); }); },
          [&] { step([&] { return rms_norm_composite(x, weight); }); });
}

void BM_RotaryForward(benchmark::State& state) {
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({kTokens, kHeads, kHeadDim});
  const auto positions = torch::arange(kTokens, torch::kLong);
  const RotaryTables tables = rotary_tables(positions);
  const auto inv_freq = chunkflow::kernels::rope_inv_freq(
      chunkflow::kernels::rope_frequencies(kTheta, kHeadDim, 4096, chunkflow::kernels::RopeScaling{}));
  compare(state, [&] { benchmark::DoNotOptimize(chunkflow::kernels::apply_rotary(x, positions, inv_freq)); },
          [&] { benchmark::DoNotOptimize(rotary_composite(x, tables)); });
}

void BM_RotaryForwardBackward(benchmark::State& state) {
  const auto x = torch::randn({kTokens, kHeads, kHeadDim}).requires_grad_();
  const auto positions = torch::arange(kTokens, torch::kLong);
  const auto dout = torch::randn({kTokens, kHeads, kHeadDim});
  const RotaryTables tables = rotary_tables(positions);
  const auto inv_freq = chunkflow::kernels::rope_inv_freq(
      chunkflow::kernels::rope_frequencies(kTheta, kHeadDim, 4096, chunkflow::kernels::RopeScaling{}));
  const auto step = [&](const auto& op) {
    op().backward(dout);
    x.mutable_grad().reset();
  };
  compare(state, [&] { step([&] { return chunkflow::kernels::apply_rotary(x, positions, inv_freq); }); },
          [&] { step([&] { return rotary_composite(x, tables); }); });
}

void BM_SwigluForward(benchmark::State& state) {
  torch::NoGradGuard no_grad;
  const auto gate = torch::randn({kTokens, kIntermediate}), up = torch::randn({kTokens, kIntermediate});
  compare(state, [&] { benchmark::DoNotOptimize(chunkflow::kernels::swiglu(gate, up)); },
          [&] { benchmark::DoNotOptimize(torch::silu(gate) * up); });
}

void BM_SwigluForwardBackward(benchmark::State& state) {
  const auto gate = torch::randn({kTokens, kIntermediate}).requires_grad_();
  const auto up = torch::randn({kTokens, kIntermediate}).requires_grad_();
  const auto dout = torch::randn({kTokens, kIntermediate});
  const auto step = [&](const auto& op) {
    op().backward(dout);
    gate.mutable_grad().reset();
    up.mutable_grad().reset();
  };
  compare(state, [&] { step([&] { return chunkflow::kernels::swiglu(gate, up); }); },
          [&] { step([&] { return torch::silu(gate) * up; }); });
}

BENCHMARK(BM_RmsNormForward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_RmsNormForwardBackward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_RotaryForward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_RotaryForwardBackward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_SwigluForward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_SwigluForwardBackward)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
