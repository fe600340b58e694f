// The attention backends share one contract. On the CPU: the composite backend (plain tensor ops)
// against our kernel on random layouts (prefixes, GQA, zero-length and query-less segments, rows
// that see no key), our kernel's bfloat16 path (float32 math, rounded), and which backend
// model.attention_backend resolves to for each device / dtype / head size, with the refusals.
// The CUDA backends run the same cases in varlen_attention_gpu_test.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernels/attention_torch.h"
#include "tests/support/expect_error.h"
#include "tests/support/test_seed.h"

namespace chunkflow::kernels {
namespace {

struct Problem {
  torch::Tensor q, k, v, dout;
  VarlenOffsets offsets;
};

torch::Tensor cumulative(const std::vector<int32_t>& lengths) {
  std::vector<int32_t> cu{0};
  for (const int32_t length : lengths) cu.push_back(cu.back() + length);
  return torch::tensor(cu, torch::kInt32);
}

Problem make_problem(const std::vector<int32_t>& sq, const std::vector<int32_t>& sk, int64_t heads, int64_t kv_heads,
                     int64_t head_dim) {
  Problem problem;
  problem.offsets.cu_seqlens_q = cumulative(sq);
  problem.offsets.cu_seqlens_k = cumulative(sk);
  for (size_t b = 0; b < sq.size(); ++b) {
    problem.offsets.max_seqlen_q = std::max<int64_t>(problem.offsets.max_seqlen_q, sq[b]);
    problem.offsets.max_seqlen_k = std::max<int64_t>(problem.offsets.max_seqlen_k, sk[b]);
  }
  const int64_t total_q = problem.offsets.cu_seqlens_q[-1].item<int64_t>();
  const int64_t total_k = problem.offsets.cu_seqlens_k[-1].item<int64_t>();
  problem.q = torch::randn({total_q, heads, head_dim});
  problem.k = torch::randn({total_k, kv_heads, head_dim});
  problem.v = torch::randn({total_k, kv_heads, head_dim});
  problem.dout = torch::randn({total_q, heads, head_dim});
  return problem;
}

struct Result {
  torch::Tensor out, dq, dk, dv;
};

Result run(const Problem& problem, AttentionBackend backend, torch::ScalarType dtype = torch::kFloat) {
  const torch::Tensor q = problem.q.to(dtype, false, true).requires_grad_(true);
  const torch::Tensor k = problem.k.to(dtype, false, true).requires_grad_(true);
  const torch::Tensor v = problem.v.to(dtype, false, true).requires_grad_(true);
  const double scale = 1.0 / std::sqrt(static_cast<double>(problem.q.size(2)));
  const torch::Tensor out = varlen_attention(q, k, v, problem.offsets, scale, backend);
  EXPECT_EQ(out.scalar_type(), dtype);
  out.backward(problem.dout.to(dtype));
  const auto gradient = [](const torch::Tensor& leaf) {
    return leaf.grad().defined() ? leaf.grad() : torch::zeros_like(leaf);
  };
  return {out.detach(), gradient(q), gradient(k), gradient(v)};
}

double largest(const torch::Tensor& tensor) { return tensor.numel() == 0 ? 0.0 : tensor.abs().max().item<double>(); }

// max |a - b| / max(max |b|, floor / 1e-5): relative to the tensor, except where the exact
// gradient vanishes. Where every segment has one key, dq and dk are zero in exact arithmetic
// (a one-key softmax is 1 whatever the score: dS = P (dP - D) with D = dP), and each
// implementation keeps its own fp32 rounding of dP - D, about head_dim x u_fp32 x |dO| |V|
// (times |q| or |k|): that is the floor for gradients (seen: 6e-7 absolute in dq and dk).
double relative_error(const torch::Tensor& actual, const torch::Tensor& expected, double floor = 0.0) {
  if (expected.numel() == 0) return 0.0;
  const double scale = std::max({largest(expected), floor / 1e-5, 1e-30});
  return (actual.to(torch::kDouble) - expected.to(torch::kDouble)).abs().max().item<double>() / scale;
}

TEST(AttentionBackendsTest, CompositeMatchesOurKernelOnRandomLayouts) {
  const uint64_t seed = testing::pick_seed();
  std::cout << "[ seed     ] " << seed << " (replay with CHUNKFLOW_TEST_SEED=" << seed << ")\n";
  torch::manual_seed(seed);
  std::mt19937_64 rng(seed);
  for (int trial = 0; trial < 20; ++trial) {
    const int64_t kv_heads = 1 + static_cast<int64_t>(rng() % 3);
    const int64_t heads = kv_heads * (int64_t{1} << (rng() % 3));
    const int64_t head_dim = 4 * (1 + static_cast<int64_t>(rng() % 8));
    std::vector<int32_t> sq, sk;
    std::string layout;
    const int segments = 1 + static_cast<int>(rng() % 6);
    for (int b = 0; b < segments; ++b) {
      const int32_t own = static_cast<int32_t>(rng() % 40);
      const int shape = static_cast<int>(rng() % 5);
      // 0: plain, 1: K/V prefix, 2: query-less keys, 3: zero-length, 4: more queries than keys
      // (the first rows see no key: zeros by the contract).
      const int32_t queries = shape == 2 || shape == 3 ? 0 : own + (shape == 4 ? 3 : 0);
      const int32_t keys = shape == 3 ? 0 : own + (shape == 1 ? static_cast<int32_t>(rng() % 60) : 0);
      sq.push_back(queries);
      sk.push_back(keys);
      layout += std::to_string(queries) + "/" + std::to_string(keys) + " ";
    }
    const Problem problem = make_problem(sq, sk, heads, kv_heads, head_dim);
    const Result ours = run(problem, AttentionBackend::kChunkflow);
    const Result composite = run(problem, AttentionBackend::kComposite);
    const std::string label = "seed " + std::to_string(seed) + " sq/sk " + layout;
    const double cancellation = 5.96e-8 * static_cast<double>(head_dim) * largest(problem.dout) * largest(problem.v) *
                                std::max(largest(problem.q), largest(problem.k));
    EXPECT_LE(relative_error(composite.out, ours.out), 1e-5) << label;
    EXPECT_LE(relative_error(composite.dq, ours.dq, cancellation), 1e-5) << label;
    EXPECT_LE(relative_error(composite.dk, ours.dk, cancellation), 1e-5) << label;
    EXPECT_LE(relative_error(composite.dv, ours.dv), 1e-5) << label;
  }
}

TEST(AttentionBackendsTest, AutoOnTheCpuIsOurKernel) {
  const Problem problem = make_problem({5, 0, 7}, {9, 4, 7}, 4, 2, 8);
  const Result automatic = run(problem, AttentionBackend::kAuto);
  const Result ours = run(problem, AttentionBackend::kChunkflow);
  EXPECT_TRUE(torch::equal(automatic.out, ours.out));
  EXPECT_TRUE(torch::equal(automatic.dk, ours.dk));
}

TEST(AttentionBackendsTest, OurKernelComputesBfloat16OnTheCpuInFloat32AndRounds) {
  const Problem problem = make_problem({6, 3}, {11, 3}, 4, 1, 16);
  // The inputs rounded to bf16 first, so that both runs see the same values.
  Problem rounded = problem;
  rounded.q = problem.q.to(torch::kBFloat16).to(torch::kFloat);
  rounded.k = problem.k.to(torch::kBFloat16).to(torch::kFloat);
  rounded.v = problem.v.to(torch::kBFloat16).to(torch::kFloat);
  rounded.dout = problem.dout.to(torch::kBFloat16).to(torch::kFloat);
  const Result wide = run(rounded, AttentionBackend::kChunkflow);
  const Result half = run(rounded, AttentionBackend::kChunkflow, torch::kBFloat16);
  EXPECT_TRUE(torch::equal(half.out, wide.out.to(torch::kBFloat16)));
  EXPECT_TRUE(torch::equal(half.dq, wide.dq.to(torch::kBFloat16)));
  EXPECT_TRUE(torch::equal(half.dk, wide.dk.to(torch::kBFloat16)));
  EXPECT_TRUE(torch::equal(half.dv, wide.dv.to(torch::kBFloat16)));
}

TEST(AttentionBackendsTest, CompositeWithoutQueriesStillReachesTheKeysBackward) {
  // A context-parallel rank may hold no query of a pass; the K/V gather's backward (a collective)
  // must still run, so k and v get (zero) gradients.
  const Problem problem = make_problem({0, 0}, {4, 6}, 2, 2, 8);
  const Result composite = run(problem, AttentionBackend::kComposite);
  EXPECT_EQ(composite.out.size(0), 0);
  EXPECT_TRUE(torch::equal(composite.dk, torch::zeros_like(problem.k)));
}

TEST(AttentionBackendsTest, QueriesWithoutAnyKeyGiveZerosOnEveryCpuBackend) {
  // Rows that see no key output zeros (the contract), also when the call has no key at all.
  const Problem problem = make_problem({3, 2}, {0, 0}, 4, 2, 8);
  for (const AttentionBackend backend : {AttentionBackend::kChunkflow, AttentionBackend::kComposite}) {
    const Result result = run(problem, backend);
    EXPECT_TRUE(torch::equal(result.out, torch::zeros_like(problem.q))) << attention_backend_name(backend);
    EXPECT_TRUE(torch::equal(result.dq, torch::zeros_like(problem.q))) << attention_backend_name(backend);
  }
}

TEST(AttentionBackendsTest, AutoPicksPerDeviceDtypeAndHeadSize) {
  const torch::Device cpu(torch::kCPU), cuda(torch::kCUDA, 0);
  EXPECT_EQ(resolve_attention_backend(AttentionBackend::kAuto, cpu, torch::kFloat, 64), AttentionBackend::kChunkflow);
  EXPECT_EQ(resolve_attention_backend(AttentionBackend::kAuto, cpu, torch::kBFloat16, 64), AttentionBackend::kChunkflow);
  EXPECT_EQ(resolve_attention_backend(AttentionBackend::kAuto, cuda, torch::kBFloat16, 128), AttentionBackend::kFlash);
  EXPECT_EQ(resolve_attention_backend(AttentionBackend::kAuto, cuda, torch::kHalf, 72), AttentionBackend::kFlash);
  EXPECT_EQ(resolve_attention_backend(AttentionBackend::kAuto, cuda, torch::kFloat, 128), AttentionBackend::kComposite);
  EXPECT_EQ(resolve_attention_backend(AttentionBackend::kAuto, cuda, torch::kBFloat16, 12), AttentionBackend::kComposite);
  EXPECT_EQ(resolve_attention_backend(AttentionBackend::kComposite, cuda, torch::kFloat, 12),
            AttentionBackend::kComposite);
}

using testing::error_message;

TEST(AttentionBackendsTest, BackendsThatCannotRunACaseAreRefusedByKeyAndValue) {
  const torch::Device cpu(torch::kCPU), cuda(torch::kCUDA, 0);
  const std::string flash_on_cpu =
      error_message([&] { resolve_attention_backend(AttentionBackend::kFlash, cpu, torch::kBFloat16, 128); });
  EXPECT_NE(flash_on_cpu.find("model.attention_backend = flash cannot run cpu BFloat16 with head_dim 128"),
            std::string::npos)
      << flash_on_cpu;
  const std::string ours_in_fp32 =
      error_message([&] { resolve_attention_backend(AttentionBackend::kChunkflow, cuda, torch::kFloat, 128); });
  EXPECT_NE(ours_in_fp32.find("model.attention_backend = chunkflow cannot run cuda:0 Float"), std::string::npos)
      << ours_in_fp32;
  EXPECT_NE(ours_in_fp32.find("composite"), std::string::npos) << ours_in_fp32;
  const std::string odd_head =
      error_message([&] { resolve_attention_backend(AttentionBackend::kFlash, cuda, torch::kHalf, 260); });
  EXPECT_NE(odd_head.find("head_dim 260"), std::string::npos) << odd_head;
  const std::string unknown = error_message([&] { parse_attention_backend("cudnn"); });
  EXPECT_NE(unknown.find("model.attention_backend = \"cudnn\" is not a backend"), std::string::npos) << unknown;
  for (const char* name : {"auto", "chunkflow", "flash", "composite"}) {
    EXPECT_EQ(attention_backend_name(parse_attention_backend(name)), name);
  }
}

}  // namespace
}  // namespace chunkflow::kernels
