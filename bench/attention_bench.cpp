// CPU varlen attention (forward + backward, causal, one 4096-token segment) against this
// machine's SGEMM, measured in the same run: the issue-5 target is at least half the SGEMM rate.
// FLOPs counted for the causal half only: forward 2 matmuls, backward 5 (dV, dP, dQ, dK and the
// recomputed S), each 2 x rows x visible keys x head_dim.
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include "kernels/attention_torch.h"

namespace {

constexpr int64_t kTokens = 4096;
constexpr int64_t kHeads = 8;
constexpr int64_t kKvHeads = 8;

double causal_flops(int64_t head_dim, int64_t matmuls) {
  const double entries = static_cast<double>(kTokens) * static_cast<double>(kTokens + 1) / 2.0;
  return static_cast<double>(matmuls) * 2.0 * entries * static_cast<double>(head_dim) * kHeads;
}

void BM_VarlenAttentionForwardBackward(benchmark::State& state) {
  const int64_t head_dim = state.range(0);
  torch::manual_seed(0);
  const auto q = torch::randn({kTokens, kHeads, head_dim}).requires_grad_(true);
  const auto k = torch::randn({kTokens, kKvHeads, head_dim}).requires_grad_(true);
  const auto v = torch::randn({kTokens, kKvHeads, head_dim}).requires_grad_(true);
  const auto cu = torch::tensor({0, static_cast<int>(kTokens)}, torch::kInt32);
  const auto dout = torch::randn({kTokens, kHeads, head_dim});
  for (auto _ : state) {
    const auto out = chunkflow::kernels::varlen_attention(q, k, v, cu, cu, kTokens, kTokens,
                                                          1.0 / std::sqrt(static_cast<double>(head_dim)));
    out.backward(dout);
    q.mutable_grad().reset();
    k.mutable_grad().reset();
    v.mutable_grad().reset();
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(causal_flops(head_dim, 7) * static_cast<double>(state.iterations()) / 1e9,
                         benchmark::Counter::kIsRate);
}

void BM_Sgemm(benchmark::State& state) {
  const int64_t n = state.range(0);
  const auto a = torch::randn({n, n}), b = torch::randn({n, n});
  auto c = torch::empty({n, n});
  for (auto _ : state) torch::mm_out(c, a, b);
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(n * n * n) *
                                                     static_cast<double>(state.iterations()) / 1e9,
                                                 benchmark::Counter::kIsRate);
}

BENCHMARK(BM_Sgemm)->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_VarlenAttentionForwardBackward)->Arg(64)->Arg(128)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
