// Varlen attention (CPU launchers and the torch adapter) against an independent dense reference:
// plain torch ops per segment in float64, with an explicit bottom-right causal mask built from
// torch::arange. Fresh random data every run; the seed is printed (CHUNKFLOW_TEST_SEED replays it).
#include <gtest/gtest.h>
#include <torch/types.h>

#include <algorithm>
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
#include "kernels/attention_torch.h"
#include "kernels/varlen_attention.h"
#include "tests/support/test_seed.h"

namespace chunkflow::kernels {
namespace {

// fp32 kernel vs float64 reference: max |error| relative to max |reference| of each tensor.
constexpr double kTolerance = 1e-5;
constexpr double kInf = std::numeric_limits<double>::infinity();

using chunkflow::testing::pick_seed;

// Segment b has sq[b] query rows and sk[b] key rows (its prefix, then its own tokens).
struct Layout {
  std::vector<int32_t> sq, sk;
  int64_t heads = 4, kv_heads = 2, head_dim = 16;
  bool causal = true;
};

struct Problem {
  torch::Tensor q, k, v, dout;          // float32 [total, heads, head_dim]
  torch::Tensor cu_seqlens_q, cu_seqlens_k;  // int32 [segments + 1]
  std::vector<int32_t> cu_q, cu_k;
  int64_t max_seqlen_q = 0, max_seqlen_k = 0;
  double softmax_scale = 1.0;
  bool causal = true;
};

// out [total_q, heads, head_dim], lse [heads, total_q], dq/dk/dv shaped like q/k/v.
struct Result {
  torch::Tensor out, lse, dq, dk, dv;
};

std::vector<int32_t> offsets(const std::vector<int32_t>& lengths) {
  std::vector<int32_t> cu{0};
  for (int32_t length : lengths) cu.push_back(cu.back() + length);
  return cu;
}

torch::Tensor int32_tensor(const std::vector<int32_t>& values) {
  return torch::tensor(std::vector<int64_t>(values.begin(), values.end()), torch::kLong)
      .to(torch::kInt);
}

Problem make_problem(const Layout& layout) {
  Problem problem;
  problem.cu_q = offsets(layout.sq);
  problem.cu_k = offsets(layout.sk);
  problem.cu_seqlens_q = int32_tensor(problem.cu_q);
  problem.cu_seqlens_k = int32_tensor(problem.cu_k);
  problem.max_seqlen_q = *std::max_element(layout.sq.begin(), layout.sq.end());
  problem.max_seqlen_k = *std::max_element(layout.sk.begin(), layout.sk.end());
  problem.q = torch::randn({problem.cu_q.back(), layout.heads, layout.head_dim});
  problem.k = torch::randn({problem.cu_k.back(), layout.kv_heads, layout.head_dim});
  problem.v = torch::randn({problem.cu_k.back(), layout.kv_heads, layout.head_dim});
  problem.dout = torch::randn({problem.cu_q.back(), layout.heads, layout.head_dim});
  problem.softmax_scale = 1.0 / std::sqrt(static_cast<double>(layout.head_dim));
  problem.causal = layout.causal;
  return problem;
}

torch::Tensor grad_or_zeros(const torch::Tensor& leaf) {
  return leaf.grad().defined() ? leaf.grad() : torch::zeros_like(leaf);
}

// Dense attention of each segment on its own, float64, autograd for the gradients.
Result dense_reference(const Problem& problem) {
  const auto q = problem.q.to(torch::kDouble).requires_grad_();
  const auto k = problem.k.to(torch::kDouble).requires_grad_();
  const auto v = problem.v.to(torch::kDouble).requires_grad_();
  const int64_t heads = q.size(1);
  const int64_t group = heads / k.size(1);
  std::vector<torch::Tensor> outs, lses;
  for (size_t b = 0; b + 1 < problem.cu_q.size(); ++b) {
    const int64_t sq = problem.cu_q[b + 1] - problem.cu_q[b];
    const int64_t sk = problem.cu_k[b + 1] - problem.cu_k[b];
    const auto qb = q.narrow(0, problem.cu_q[b], sq);
    if (sk == 0) {
      outs.push_back(qb * 0.0);
      lses.push_back(torch::full({heads, sq}, -kInf, torch::kDouble));
      continue;
    }
    const auto kb = k.narrow(0, problem.cu_k[b], sk).repeat_interleave(group, 1);
    const auto vb = v.narrow(0, problem.cu_k[b], sk).repeat_interleave(group, 1);
    const auto scores = torch::einsum("qhd,khd->hqk", {qb, kb}) * problem.softmax_scale;
    const auto rows = torch::arange(sq, torch::kLong).unsqueeze(1);
    const auto cols = torch::arange(sk, torch::kLong).unsqueeze(0);
    const auto allowed = problem.causal ? cols <= rows + (sk - sq)
                                        : torch::ones({sq, sk}, torch::kBool);
    const auto masked = scores.masked_fill(allowed.logical_not(), -kInf);
    const auto row_sees_nothing = allowed.logical_not().all(-1, /*keepdim=*/true);
    lses.push_back(torch::logsumexp(masked, -1).masked_fill(row_sees_nothing.squeeze(-1), -kInf));
    // A row with no key would be all -inf (softmax NaN): give it finite scores, then zero it.
    const auto probs =
        torch::softmax(masked.masked_fill(row_sees_nothing, 0.0), -1) * allowed.to(torch::kDouble);
    outs.push_back(torch::einsum("hqk,khd->qhd", {probs, vb}));
  }
  const auto out = torch::cat(outs, 0);
  const auto lse = torch::cat(lses, 1);
  out.backward(problem.dout.to(torch::kDouble));
  return {out.detach(), lse.detach(), grad_or_zeros(q), grad_or_zeros(k), grad_or_zeros(v)};
}

Result run_adapter(const Problem& problem) {
  const auto q = problem.q.clone().requires_grad_();
  const auto k = problem.k.clone().requires_grad_();
  const auto v = problem.v.clone().requires_grad_();
  const auto out = varlen_attention(q, k, v, problem.cu_seqlens_q, problem.cu_seqlens_k,
                                    problem.max_seqlen_q, problem.max_seqlen_k,
                                    problem.softmax_scale, problem.causal);
  out.backward(problem.dout);
  auto [forward_out, lse] = varlen_attention_forward(
      problem.q, problem.k, problem.v, problem.cu_seqlens_q, problem.cu_seqlens_k,
      problem.max_seqlen_q, problem.max_seqlen_k, problem.softmax_scale, problem.causal);
  EXPECT_TRUE(torch::equal(forward_out, out.detach()))
      << "varlen_attention_forward and varlen_attention disagree";
  return {out.detach(), lse, grad_or_zeros(q), grad_or_zeros(k), grad_or_zeros(v)};
}

torch::Tensor nan_like(const torch::Tensor& tensor) {
  return torch::full_like(tensor, std::numeric_limits<float>::quiet_NaN());
}

// Calls the raw launchers with every output buffer filled with NaN first.
Result run_launchers_on_poisoned_buffers(const Problem& problem) {
  const int64_t heads = problem.q.size(1);
  Result result;
  result.out = nan_like(problem.q);
  result.lse = torch::full({heads, problem.q.size(0)}, std::numeric_limits<float>::quiet_NaN());
  VarlenAttentionParams forward;
  forward.q = problem.q.data_ptr();
  forward.k = problem.k.data_ptr();
  forward.v = problem.v.data_ptr();
  forward.cu_seqlens_q = problem.cu_q.data();
  forward.cu_seqlens_k = problem.cu_k.data();
  forward.out = result.out.data_ptr();
  forward.lse = result.lse.data_ptr<float>();
  forward.segments = static_cast<int>(problem.cu_q.size() - 1);
  forward.heads = static_cast<int>(heads);
  forward.kv_heads = static_cast<int>(problem.k.size(1));
  forward.head_dim = static_cast<int>(problem.q.size(2));
  forward.max_seqlen_q = static_cast<int>(problem.max_seqlen_q);
  forward.max_seqlen_k = static_cast<int>(problem.max_seqlen_k);
  forward.softmax_scale = static_cast<float>(problem.softmax_scale);
  forward.causal = problem.causal;
  varlen_attention_forward_cpu(forward);

  result.dq = nan_like(problem.q);
  result.dk = nan_like(problem.k);
  result.dv = nan_like(problem.v);
  VarlenAttentionBackwardParams backward;
  backward.q = forward.q;
  backward.k = forward.k;
  backward.v = forward.v;
  backward.out = result.out.data_ptr();
  backward.lse = result.lse.data_ptr<float>();
  backward.dout = problem.dout.data_ptr();
  backward.cu_seqlens_q = forward.cu_seqlens_q;
  backward.cu_seqlens_k = forward.cu_seqlens_k;
  backward.dq = result.dq.data_ptr();
  backward.dk = result.dk.data_ptr();
  backward.dv = result.dv.data_ptr();
  backward.segments = forward.segments;
  backward.heads = forward.heads;
  backward.kv_heads = forward.kv_heads;
  backward.head_dim = forward.head_dim;
  backward.max_seqlen_q = forward.max_seqlen_q;
  backward.max_seqlen_k = forward.max_seqlen_k;
  backward.softmax_scale = forward.softmax_scale;
  backward.causal = forward.causal;
  varlen_attention_backward_cpu(backward);
  return result;
}

// Max |actual - expected| over finite entries relative to max |expected|; the -inf pattern (lse
// of rows that see no key) must match exactly and actual must hold no NaN.
double relative_error(const torch::Tensor& actual, const torch::Tensor& expected,
                      const std::string& what) {
  EXPECT_EQ(actual.sizes(), expected.sizes()) << what;
  if (actual.sizes() != expected.sizes()) return kInf;
  EXPECT_FALSE(torch::isnan(actual).any().item<bool>()) << what << " holds NaN";
  const auto actual64 = actual.to(torch::kDouble);
  EXPECT_TRUE(torch::equal(torch::isinf(actual64), torch::isinf(expected)))
      << what << ": infinities differ";
  const auto finite = torch::isfinite(expected);
  const auto expected_finite = expected.masked_select(finite);
  if (expected_finite.numel() == 0) return 0.0;
  const double error =
      (actual64.masked_select(finite) - expected_finite).abs().max().item<double>();
  const double magnitude = expected_finite.abs().max().item<double>();
  return magnitude > 0.0 ? error / magnitude : error;
}

void expect_matches(const Result& actual, const Result& expected, const std::string& label) {
  const double out = relative_error(actual.out, expected.out, label + " out");
  const double lse = relative_error(actual.lse, expected.lse, label + " lse");
  const double dq = relative_error(actual.dq, expected.dq, label + " dq");
  const double dk = relative_error(actual.dk, expected.dk, label + " dk");
  const double dv = relative_error(actual.dv, expected.dv, label + " dv");
  std::cout << "[ rel err  ] " << label << ": out " << out << ", lse " << lse << ", dq " << dq
            << ", dk " << dk << ", dv " << dv << "\n";
  EXPECT_LE(out, kTolerance) << label;
  EXPECT_LE(lse, kTolerance) << label;
  EXPECT_LE(dq, kTolerance) << label;
  EXPECT_LE(dk, kTolerance) << label;
  EXPECT_LE(dv, kTolerance) << label;
}

std::string describe(const Layout& layout) {
  std::string text = "heads " + std::to_string(layout.heads) + "/" +
                     std::to_string(layout.kv_heads) + " head_dim " +
                     std::to_string(layout.head_dim) + (layout.causal ? " causal" : " full") +
                     " (sq,sk):";
  for (size_t b = 0; b < layout.sq.size(); ++b) {
    text += " (" + std::to_string(layout.sq[b]) + "," + std::to_string(layout.sk[b]) + ")";
  }
  return text;
}

// Compares both the autograd adapter and the raw launchers (over NaN-poisoned buffers) with the
// dense reference; returns the adapter's result for further checks.
Result expect_matches_reference(const Layout& layout) {
  const Problem problem = make_problem(layout);
  const Result expected = dense_reference(problem);
  const std::string label = describe(layout);
  const Result adapter = run_adapter(problem);
  expect_matches(adapter, expected, "adapter   " + label);
  expect_matches(run_launchers_on_poisoned_buffers(problem), expected, "launchers " + label);
  return adapter;
}

::testing::AssertionResult contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << text << "\" lacks \"" << part << "\"";
}

std::string error_of(const std::function<void()>& call) {
  try {
    call();
  } catch (const core::Error& error) {
    return error.what();
  }
  return "<no error thrown>";
}

class VarlenAttentionTest : public ::testing::Test {
 protected:
  VarlenAttentionTest() : seed_(pick_seed()), rng_(seed_) {
    std::cout << "[ seed     ] " << seed_ << " (replay with CHUNKFLOW_TEST_SEED=" << seed_ << ")\n";
    RecordProperty("seed", std::to_string(seed_));
    torch::manual_seed(seed_);
  }

  int32_t below(uint64_t bound) { return static_cast<int32_t>(rng_.below(bound)); }

  const uint64_t seed_;
  core::Rng rng_;
};

TEST_F(VarlenAttentionTest, MatchesDenseReferenceOnRandomPrefixedSegmentsForEveryGqaRatioAndHeadDim) {
  for (int64_t ratio : {1, 2, 4}) {
    for (int64_t head_dim : {8, 16, 64}) {
      Layout layout;
      layout.kv_heads = 1 + below(2);
      layout.heads = ratio * layout.kv_heads;
      layout.head_dim = head_dim;
      const int segments = 1 + below(4);
      for (int b = 0; b < segments; ++b) {
        const int32_t sq = 1 + below(200);
        layout.sq.push_back(sq);
        layout.sk.push_back(below(300) + sq);
      }
      expect_matches_reference(layout);
    }
  }
}

TEST_F(VarlenAttentionTest, MatchesDenseReferenceOnPackedSegmentsWithoutPrefix) {
  Layout layout;
  layout.sq = {1, 7, 63, 64, 65, 127, 129, 300};
  std::shuffle(layout.sq.begin(), layout.sq.end(), std::mt19937_64(seed_));
  layout.sk = layout.sq;
  layout.heads = 8;
  layout.kv_heads = 2;
  layout.head_dim = 64;
  expect_matches_reference(layout);
}

TEST_F(VarlenAttentionTest, MatchesDenseReferenceAtTileBoundaryLengthsWithPrefixes) {
  Layout layout;
  layout.heads = 2;
  layout.kv_heads = 1;
  layout.head_dim = 8;
  for (int32_t sq : {1, 7, 63, 64, 65, 127, 129, 300}) {
    layout.sq.push_back(sq);
    layout.sk.push_back(sq + below(700));  // prefixes up to past one 512-key block
  }
  expect_matches_reference(layout);
}

TEST_F(VarlenAttentionTest, ZeroLengthSegmentsContributeNothingAndPrefixOnlyKeysGetZeroGradient) {
  Layout layout;
  layout.sq = {0, 5, 0, 17, 0};
  layout.sk = {40, 5, 0, 50, 0};
  const Result result = expect_matches_reference(layout);
  // Segment 0 has keys but no query: its dk/dv rows exist and must be exactly zero.
  EXPECT_EQ(result.dk.narrow(0, 0, 40).abs().max().item<float>(), 0.0f);
  EXPECT_EQ(result.dv.narrow(0, 0, 40).abs().max().item<float>(), 0.0f);
  EXPECT_GT(result.dk.narrow(0, 45, 50).abs().max().item<float>(), 0.0f);
}

TEST_F(VarlenAttentionTest, RowsThatSeeNoKeyOutputZerosWithNegativeInfinityLse) {
  Layout layout;
  layout.sq = {10, 6, 130, 5};
  layout.sk = {4, 0, 3, 5};  // sk < sq: the first sq - sk rows of each segment see no key
  const Result result = expect_matches_reference(layout);
  const std::vector<int32_t> cu_q = offsets(layout.sq);
  for (size_t b = 0; b + 1 < layout.sq.size(); ++b) {
    const int64_t blind = layout.sq[b] - layout.sk[b];
    if (blind <= 0) continue;
    const auto out_rows = result.out.narrow(0, cu_q[b], blind);
    EXPECT_EQ(out_rows.abs().max().item<float>(), 0.0f) << "segment " << b;
    EXPECT_EQ(result.dq.narrow(0, cu_q[b], blind).abs().max().item<float>(), 0.0f)
        << "segment " << b;
    EXPECT_TRUE((result.lse.narrow(1, cu_q[b], blind) == -kInf).all().item<bool>())
        << "segment " << b;
    if (layout.sk[b] > 0) {
      // The row right after the blind ones sees exactly one key.
      EXPECT_TRUE(torch::isfinite(result.lse.select(1, cu_q[b] + blind)).all().item<bool>());
    }
  }
}

TEST_F(VarlenAttentionTest, SingleQueryRowAttendsToItsWholePrefix) {
  Layout layout;
  layout.sq = {1, 1, 1, 1};
  layout.sk = {1, 2, 513, 1000};
  layout.heads = 4;
  layout.kv_heads = 1;
  expect_matches_reference(layout);
}

TEST_F(VarlenAttentionTest, NonCausalModeAttendsToEveryKeyOfItsSegment) {
  Layout layout;
  layout.sq = {7, 65, 4, 129};
  layout.sk = {3, 200, 0, 129};
  layout.causal = false;
  const Result full = expect_matches_reference(layout);
  EXPECT_EQ(full.lse.narrow(1, 72, 4).max().item<float>(), -std::numeric_limits<float>::infinity())
      << "a segment without keys sees nothing even in non-causal mode";
}

TEST_F(VarlenAttentionTest, LongPrefixIsWalkedInKeyBlocks) {
  Layout layout;
  layout.sq = {64, 300};
  layout.sk = {64 + 5000, 300 + 1200};
  layout.heads = 4;
  layout.kv_heads = 2;
  layout.head_dim = 64;
  expect_matches_reference(layout);
}

TEST_F(VarlenAttentionTest, LaunchersWriteEveryElementOfNaNPoisonedBuffers) {
  Layout layout;
  layout.sq = {0, 9, 3, 140};
  layout.sk = {33, 2, 0, 700};
  const Problem problem = make_problem(layout);
  const Result result = run_launchers_on_poisoned_buffers(problem);
  for (const auto& [name, tensor] : {std::pair{"out", result.out}, std::pair{"lse", result.lse},
                                     std::pair{"dq", result.dq}, std::pair{"dk", result.dk},
                                     std::pair{"dv", result.dv}}) {
    EXPECT_FALSE(torch::isnan(tensor).any().item<bool>()) << name << " kept a poisoned element";
  }
}

TEST_F(VarlenAttentionTest, KeysOfOneSegmentNeverReachAnotherSegment) {
  Layout layout;
  layout.sq = {50, 40};
  layout.sk = {80, 60};
  const Problem problem = make_problem(layout);
  Problem changed = problem;
  changed.q = problem.q.clone();
  changed.k = problem.k.clone();
  changed.v = problem.v.clone();
  changed.dout = problem.dout.clone();
  changed.q.narrow(0, 50, 40).normal_();
  changed.k.narrow(0, 80, 60).normal_();
  changed.v.narrow(0, 80, 60).normal_();
  changed.dout.narrow(0, 50, 40).normal_();

  const Result before = run_adapter(problem);
  const Result after = run_adapter(changed);
  EXPECT_TRUE(torch::equal(before.out.narrow(0, 0, 50), after.out.narrow(0, 0, 50)));
  EXPECT_TRUE(torch::equal(before.lse.narrow(1, 0, 50), after.lse.narrow(1, 0, 50)));
  EXPECT_TRUE(torch::equal(before.dq.narrow(0, 0, 50), after.dq.narrow(0, 0, 50)));
  EXPECT_TRUE(torch::equal(before.dk.narrow(0, 0, 80), after.dk.narrow(0, 0, 80)));
  EXPECT_TRUE(torch::equal(before.dv.narrow(0, 0, 80), after.dv.narrow(0, 0, 80)));
  // The change did reach segment 1 itself.
  EXPECT_FALSE(torch::equal(before.out.narrow(0, 50, 40), after.out.narrow(0, 50, 40)));
  EXPECT_FALSE(torch::equal(before.dk.narrow(0, 80, 60), after.dk.narrow(0, 80, 60)));
}

struct ParamsFixture {
  std::vector<float> q = std::vector<float>(10 * 4 * 8), kv = std::vector<float>(14 * 2 * 8);
  std::vector<float> out = q, lse = std::vector<float>(4 * 10), dk = kv, dv = kv;
  std::vector<int32_t> cu_q{0, 4, 10}, cu_k{0, 6, 14};

  VarlenAttentionParams forward() {
    VarlenAttentionParams params;
    params.q = q.data();
    params.k = kv.data();
    params.v = kv.data();
    params.cu_seqlens_q = cu_q.data();
    params.cu_seqlens_k = cu_k.data();
    params.out = out.data();
    params.lse = lse.data();
    params.segments = 2;
    params.heads = 4;
    params.kv_heads = 2;
    params.head_dim = 8;
    params.max_seqlen_q = 6;
    params.max_seqlen_k = 8;
    return params;
  }

  VarlenAttentionBackwardParams backward() {
    VarlenAttentionBackwardParams params;
    params.q = q.data();
    params.k = kv.data();
    params.v = kv.data();
    params.out = out.data();
    params.lse = lse.data();
    params.dout = out.data();
    params.cu_seqlens_q = cu_q.data();
    params.cu_seqlens_k = cu_k.data();
    params.dq = q.data();
    params.dk = dk.data();
    params.dv = dv.data();
    params.segments = 2;
    params.heads = 4;
    params.kv_heads = 2;
    params.head_dim = 8;
    params.max_seqlen_q = 6;
    params.max_seqlen_k = 8;
    return params;
  }
};

std::string forward_check_error(const std::function<void(VarlenAttentionParams&, ParamsFixture&)>&
                                    break_rule) {
  ParamsFixture fixture;
  VarlenAttentionParams params = fixture.forward();
  break_rule(params, fixture);
  return error_of([&] { check_params(params); });
}

TEST_F(VarlenAttentionTest, CheckParamsRejectsBrokenRulesQuotingRuleAndValues) {
  ParamsFixture fixture;
  EXPECT_NO_THROW(check_params(fixture.forward()));
  EXPECT_NO_THROW(check_params(fixture.backward()));

  EXPECT_TRUE(contains(forward_check_error([](auto& p, auto&) { p.q = nullptr; }),
              "params.q must not be null"));
  EXPECT_TRUE(contains(forward_check_error([](auto& p, auto&) { p.lse = nullptr; }),
              "params.lse must not be null"));
  EXPECT_TRUE(contains(forward_check_error([](auto& p, auto&) { p.kv_heads = 3; }),
              "heads must be a multiple of kv_heads (GQA groups of equal size), got "
                        "heads = 4, kv_heads = 3"));
  EXPECT_TRUE(contains(forward_check_error([](auto& p, auto&) { p.head_dim = 0; }),
              "head_dim must be > 0, got 0"));
  EXPECT_TRUE(contains(forward_check_error([](auto&, auto& f) { f.cu_q[0] = 1; }),
              "cu_seqlens_q[0] must be 0 (offsets start at the first row), got 1"));
  EXPECT_TRUE(contains(forward_check_error([](auto&, auto& f) { f.cu_k[2] = 5; }),
              "cu_seqlens_k must be non-decreasing, got cu_seqlens_k[1] = 6 > "
                        "cu_seqlens_k[2] = 5"));
  EXPECT_TRUE(contains(forward_check_error([](auto& p, auto&) { p.max_seqlen_q = 5; }),
              "segment 1 has 6 rows (cu_seqlens_q[2] - cu_seqlens_q[1]) but "
                        "max_seqlen_q = 5"));
  EXPECT_TRUE(contains(forward_check_error([](auto& p, auto&) { p.max_seqlen_k = 7; }),
              "segment 1 has 8 rows (cu_seqlens_k[2] - cu_seqlens_k[1]) but "
                        "max_seqlen_k = 7"));

  VarlenAttentionBackwardParams backward = fixture.backward();
  backward.dk = nullptr;
  EXPECT_TRUE(contains(error_of([&] { check_params(backward); }),
              "varlen_attention_backward: params.dk must not be null"));
  backward = fixture.backward();
  backward.heads = 0;
  EXPECT_TRUE(contains(error_of([&] { check_params(backward); }), "heads must be > 0, got 0"));
}

TEST_F(VarlenAttentionTest, CpuPathAsksForFloat32WhenGivenHalfPrecision) {
  Layout layout;
  layout.sq = {5};
  layout.sk = {9};
  const Problem problem = make_problem(layout);
  const std::string adapter_error = error_of([&] {
    varlen_attention_forward(problem.q.to(torch::kBFloat16), problem.k.to(torch::kBFloat16),
                             problem.v.to(torch::kBFloat16), problem.cu_seqlens_q,
                             problem.cu_seqlens_k, 5, 9, problem.softmax_scale);
  });
  EXPECT_TRUE(contains(adapter_error, "the CPU path takes float32, got bfloat16"));

  ParamsFixture fixture;
  VarlenAttentionBackwardParams backward = fixture.backward();
  backward.dtype = ScalarType::kFloat16;
  EXPECT_TRUE(contains(error_of([&] { varlen_attention_backward_cpu(backward); }),
              "the CPU path takes float32, got float16"));
}

TEST_F(VarlenAttentionTest, AdapterHandlesAChunkWithoutQueries) {
  // A context-parallel rank can hold no rows of a small chunk: no segments, no queries, and the
  // backward still runs (it must reach the K/V gather's collective) with zero K/V gradients.
  const torch::Tensor q = torch::zeros({0, 4, 8}, torch::requires_grad());
  const torch::Tensor k = torch::randn({3, 2, 8}, torch::requires_grad());
  const torch::Tensor v = torch::randn({3, 2, 8}, torch::requires_grad());
  const torch::Tensor cu = torch::zeros({1}, torch::kInt32);
  const torch::Tensor no_rows = torch::zeros({0}, torch::kInt64);
  const torch::Tensor out =
      varlen_attention(q, k.index_select(0, no_rows), v.index_select(0, no_rows), cu, cu, 0, 0, 0.25);
  EXPECT_EQ(out.sizes(), q.sizes());
  out.sum().backward();
  ASSERT_TRUE(k.grad().defined());
  EXPECT_EQ(k.grad().abs().sum().item<double>(), 0.0);
  EXPECT_EQ(v.grad().abs().sum().item<double>(), 0.0);
}

TEST_F(VarlenAttentionTest, AdapterRejectsTensorsThatDisagreeWithTheOffsets) {
  Layout layout;
  layout.sq = {5, 3};
  layout.sk = {9, 3};
  const Problem p = make_problem(layout);
  EXPECT_TRUE(contains(error_of([&] {
                varlen_attention(p.q.narrow(0, 0, 7), p.k, p.v, p.cu_seqlens_q, p.cu_seqlens_k,
                                 5, 9, 0.25);
              }),
              "cu_seqlens_q[-1] must equal total_q (q.size(0)) = 7, got 8"));
  EXPECT_TRUE(contains(error_of([&] {
                varlen_attention(p.q, p.k, p.v, p.cu_seqlens_q.to(torch::kLong), p.cu_seqlens_k,
                                 5, 9, 0.25);
              }),
              "cu_seqlens_q must be int32, got Long"));
  EXPECT_TRUE(contains(error_of([&] {
                varlen_attention(p.q, p.k, p.v.narrow(2, 0, 8), p.cu_seqlens_q, p.cu_seqlens_k,
                                 5, 9, 0.25);
              }),
              "v must have the shape of k"));
  EXPECT_TRUE(contains(error_of([&] {
                varlen_attention(p.q, p.k, p.v, p.cu_seqlens_q, p.cu_seqlens_k, 4, 9, 0.25);
              }),
              "but max_seqlen_q = 4"));
}

}  // namespace
}  // namespace chunkflow::kernels
