// The CUDA path of the tiled cross-entropy (launchers and torch adapter) against PyTorch on full
// logits, held to FlashAttention's rule: against a float64 reference, our error is at most 2x
// (loss, lse) or 3x (gradients) the error of plain PyTorch computing in the same dtype. Odd
// sizes, tiles that do not divide the tokens, ignored labels; outputs and workspaces are NaN
// before each launch, so an element the kernels forget to write fails the test. Skips without a
// CUDA device. Fresh random data each run; CHUNKFLOW_TEST_SEED=<seed> repeats a run.
#include <gtest/gtest.h>
#include <torch/torch.h>

#ifdef CHUNKFLOW_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "kernels/cross_entropy_torch.h"
#include "kernels/tiled_cross_entropy.h"
#include "tests/support/gpu_skip.h"
#include "tests/support/test_seed.h"

// The launchers exist only in CUDA builds; a CPU-only build has no tests here.
#ifdef CHUNKFLOW_WITH_CUDA

namespace chunkflow::kernels {
namespace {

namespace F = torch::nn::functional;

uint64_t fresh_seed() { return chunkflow::testing::pick_seed(); }

// Seeds torch's generators per test and prints the seed so a failure can be repeated.
class TiledCrossEntropyGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    seed_ = fresh_seed();
    torch::manual_seed(seed_);
    std::cout << "seed = " << seed_ << " (CHUNKFLOW_TEST_SEED=" << seed_ << " repeats it)\n";
    RecordProperty("seed", std::to_string(seed_));
  }
  uint64_t seed_ = 0;
};

struct Problem {
  torch::Tensor hidden;  // [tokens, hidden_size] float32, CUDA
  torch::Tensor weight;  // [vocab, hidden_size] float32, CUDA
  torch::Tensor labels;  // [tokens] int64, CUDA, about ignored_fraction of them -100
};

Problem make_problem(int64_t tokens, int64_t vocab, int64_t hidden_size,
                     double ignored_fraction = 0.2) {
  const auto options = torch::TensorOptions().device(torch::kCUDA);
  Problem problem;
  problem.hidden = torch::randn({tokens, hidden_size}, options);
  // Logits with a standard deviation near 3, so the softmax is far from uniform.
  problem.weight = torch::randn({vocab, hidden_size}, options) * (3.0 / std::sqrt(hidden_size));
  problem.labels =
      torch::randint(0, vocab, {tokens}, options.dtype(torch::kInt64))
          .masked_fill(torch::rand({tokens}, options) < ignored_fraction, kIgnoreIndex);
  return problem;
}

ScalarType kernel_dtype(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat32: return ScalarType::kFloat32;
    case torch::kBFloat16: return ScalarType::kBFloat16;
    case torch::kFloat16: return ScalarType::kFloat16;
    default: break;
  }
  ADD_FAILURE() << "no kernel dtype for " << dtype;
  return ScalarType::kFloat32;
}

// loss 0-dim; lse [tokens] (0 for ignored tokens); d_hidden, d_weight like hidden and weight.
struct Outputs {
  torch::Tensor loss, lse, d_hidden, d_weight;
};

// Plain PyTorch on full logits, computing in the dtype of hidden and weight; gradients of
// loss * grad_loss. In float64 this is the reference.
Outputs torch_cross_entropy(const torch::Tensor& hidden_in, const torch::Tensor& weight_in,
                            const torch::Tensor& labels, double grad_loss) {
  const torch::Tensor hidden = hidden_in.detach().clone().requires_grad_(true);
  const torch::Tensor weight = weight_in.detach().clone().requires_grad_(true);
  const torch::Tensor logits = hidden.matmul(weight.t());
  const torch::Tensor loss = F::cross_entropy(
      logits, labels,
      F::CrossEntropyFuncOptions().reduction(torch::kSum).ignore_index(kIgnoreIndex));
  (loss * grad_loss).backward();
  const torch::Tensor lse =
      logits.detach().logsumexp(/*dim=*/1).masked_fill(labels == kIgnoreIndex, 0.0);
  return {loss.detach(), lse, hidden.grad(), weight.grad()};
}

// Calls the two launchers directly on the current stream, with every output and workspace
// buffer filled with NaN first (the backward's logits buffer too, so it must recompute them).
Outputs run_launchers(const torch::Tensor& hidden, const torch::Tensor& weight,
                      const torch::Tensor& labels, int64_t tile_tokens, float grad_loss) {
  const int64_t tokens = hidden.size(0), hidden_size = hidden.size(1), vocab = weight.size(0);
  const int64_t tile = std::min(tile_tokens, tokens);
  const auto fp32 = hidden.options().dtype(torch::kFloat32);
  const double poison = std::numeric_limits<double>::quiet_NaN();
  const ScalarType dtype = kernel_dtype(hidden.scalar_type());
  void* const stream = c10::cuda::getCurrentCUDAStream().stream();
  Outputs out{torch::full({}, poison, fp32), torch::full({tokens}, poison, fp32),
              torch::full_like(hidden, poison), torch::full_like(weight, poison)};

  torch::Tensor logits = torch::full({tile, vocab}, poison, fp32);
  torch::Tensor token_loss = torch::full({tokens}, poison, fp32);
  TiledCrossEntropyParams forward;
  forward.hidden = hidden.const_data_ptr();
  forward.weight = weight.const_data_ptr();
  forward.labels = labels.const_data_ptr<int64_t>();
  forward.loss_sum = out.loss.mutable_data_ptr<float>();
  forward.lse = out.lse.mutable_data_ptr<float>();
  forward.tokens = tokens;
  forward.hidden_size = hidden_size;
  forward.vocab = vocab;
  forward.tile_tokens = tile_tokens;
  forward.dtype = dtype;
  TiledCrossEntropyForwardWorkspace forward_workspace;
  forward_workspace.logits = logits.mutable_data_ptr<float>();
  forward_workspace.token_loss = token_loss.mutable_data_ptr<float>();
  tiled_cross_entropy_forward_cuda(forward, forward_workspace, stream);

  logits.fill_(poison);
  torch::Tensor grad_logits, d_weight_fp32;
  TiledCrossEntropyBackwardParams backward;
  backward.hidden = hidden.const_data_ptr();
  backward.weight = weight.const_data_ptr();
  backward.labels = labels.const_data_ptr<int64_t>();
  backward.lse = out.lse.const_data_ptr<float>();
  backward.grad_loss = grad_loss;
  backward.d_hidden = out.d_hidden.mutable_data_ptr();
  backward.d_weight = out.d_weight.mutable_data_ptr();
  backward.tokens = tokens;
  backward.hidden_size = hidden_size;
  backward.vocab = vocab;
  backward.tile_tokens = tile_tokens;
  backward.dtype = dtype;
  TiledCrossEntropyBackwardWorkspace backward_workspace;
  backward_workspace.logits = logits.mutable_data_ptr<float>();
  if (dtype != ScalarType::kFloat32) {
    grad_logits = torch::full({tile, vocab}, poison, hidden.options());
    d_weight_fp32 = torch::full({vocab, hidden_size}, poison, fp32);
    backward_workspace.grad_logits = grad_logits.mutable_data_ptr();
    backward_workspace.d_weight_fp32 = d_weight_fp32.mutable_data_ptr<float>();
  }
  tiled_cross_entropy_backward_cuda(backward, backward_workspace, stream);
  torch::cuda::synchronize();
  return out;
}

// max |actual - reference|, in float64; NaN anywhere in actual gives NaN, which fails every
// comparison below.
double max_abs_error(const torch::Tensor& actual, const torch::Tensor& reference) {
  return (actual.to(torch::kFloat64) - reference).abs().max().item<double>();
}

// FlashAttention's rule. The floor (1e-6 of the reference's largest magnitude, about 8 float32
// ulps) keeps float32, where plain PyTorch can be nearly exact, from demanding better than
// float32 arithmetic can give; for bf16/fp16 plain PyTorch's error is far above it.
void expect_within_rule(const std::string& what, const torch::Tensor& ours,
                        const torch::Tensor& plain, const torch::Tensor& reference,
                        double factor) {
  const double ours_error = max_abs_error(ours, reference);
  const double plain_error = max_abs_error(plain, reference);
  const double floor_error = 1e-6 * reference.abs().max().item<double>();
  std::cout << what << ": max error " << ours_error << " (plain torch " << plain_error << ")\n";
  EXPECT_LE(ours_error, factor * plain_error + floor_error)
      << what << ": ours " << ours_error << ", plain torch in the same dtype " << plain_error
      << ", allowed " << factor << "x + " << floor_error;
}

void expect_all_within_rule(const std::string& what, const Outputs& ours, const Outputs& plain,
                            const Outputs& reference) {
  expect_within_rule(what + " loss", ours.loss, plain.loss, reference.loss, 2.0);
  expect_within_rule(what + " lse", ours.lse, plain.lse, reference.lse, 2.0);
  expect_within_rule(what + " d_hidden", ours.d_hidden, plain.d_hidden, reference.d_hidden, 3.0);
  expect_within_rule(what + " d_weight", ours.d_weight, plain.d_weight, reference.d_weight, 3.0);
}

std::string dtype_name(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat32: return "Float32";
    case torch::kBFloat16: return "BFloat16";
    case torch::kFloat16: return "Float16";
    default: return "Other";
  }
}

struct ShapeCase {
  int64_t tokens, vocab, hidden_size, tile_tokens;
};

void PrintTo(const ShapeCase& shape, std::ostream* out) {
  *out << "{tokens " << shape.tokens << ", vocab " << shape.vocab << ", hidden_size "
       << shape.hidden_size << ", tile_tokens " << shape.tile_tokens << "}";
}

class TiledCrossEntropyGpuShapesTest
    : public TiledCrossEntropyGpuTest,
      public ::testing::WithParamInterface<std::tuple<ShapeCase, torch::ScalarType>> {};

TEST_P(TiledCrossEntropyGpuShapesTest, LaunchersMatchTorchWithinFlashAttentionRule) {
  CHUNKFLOW_SKIP_WITHOUT_CUDA();
  const auto [shape, dtype] = GetParam();
  const Problem problem = make_problem(shape.tokens, shape.vocab, shape.hidden_size);
  const torch::Tensor hidden = problem.hidden.to(dtype), weight = problem.weight.to(dtype);
  constexpr float kGradLoss = 0.37f;
  const Outputs ours = run_launchers(hidden, weight, problem.labels, shape.tile_tokens, kGradLoss);
  const Outputs plain = torch_cross_entropy(hidden, weight, problem.labels, kGradLoss);
  // The reference starts from the same rounded inputs: only the arithmetic is judged.
  const Outputs reference = torch_cross_entropy(hidden.to(torch::kFloat64),
                                                weight.to(torch::kFloat64), problem.labels,
                                                kGradLoss);
  EXPECT_EQ(ours.d_hidden.scalar_type(), dtype);
  const torch::Tensor ignored = problem.labels == kIgnoreIndex;
  if (ignored.any().item<bool>()) {
    EXPECT_EQ(ours.lse.masked_select(ignored).abs().max().item<float>(), 0.0f);
    EXPECT_EQ(ours.d_hidden.index({ignored}).abs().max().item<float>(), 0.0f);
  }
  expect_all_within_rule(std::to_string(shape.tokens) + " tokens, vocab " +
                             std::to_string(shape.vocab) + ", tile " +
                             std::to_string(shape.tile_tokens) + ", " + dtype_name(dtype),
                         ours, plain, reference);
}

// Tokens 1, 127 and 1025 with tiles below, above and not dividing them; vocabularies 1000 and
// 32003 (odd, so rows are not vector-aligned); hidden_size 100 makes bf16/fp16 rows 200 bytes.
INSTANTIATE_TEST_SUITE_P(
    OddSizes, TiledCrossEntropyGpuShapesTest,
    ::testing::Combine(::testing::Values(ShapeCase{1, 1000, 64, 64}, ShapeCase{127, 32003, 64, 50},
                                         ShapeCase{127, 1000, 100, 1024},
                                         ShapeCase{1025, 1000, 128, 256},
                                         ShapeCase{1025, 32003, 64, 300}),
                       ::testing::Values(torch::kFloat32, torch::kBFloat16, torch::kFloat16)),
    [](const ::testing::TestParamInfo<std::tuple<ShapeCase, torch::ScalarType>>& case_info) {
      const ShapeCase& shape = std::get<0>(case_info.param);
      return "Tokens" + std::to_string(shape.tokens) + "Vocab" + std::to_string(shape.vocab) +
             "Hidden" + std::to_string(shape.hidden_size) + "Tile" +
             std::to_string(shape.tile_tokens) + dtype_name(std::get<1>(case_info.param));
    });

class TiledCrossEntropyGpuDtypeTest : public TiledCrossEntropyGpuTest,
                                      public ::testing::WithParamInterface<torch::ScalarType> {};

TEST_P(TiledCrossEntropyGpuDtypeTest, AllIgnoredLabelsGiveExactZerosOverPoisonedOutputs) {
  CHUNKFLOW_SKIP_WITHOUT_CUDA();
  const torch::ScalarType dtype = GetParam();
  const Problem problem = make_problem(130, 1000, 32, /*ignored_fraction=*/1.0);
  const Outputs ours = run_launchers(problem.hidden.to(dtype), problem.weight.to(dtype),
                                     problem.labels, 64, 1.0f);
  EXPECT_EQ(ours.loss.item<float>(), 0.0f);
  EXPECT_EQ(ours.lse.abs().max().item<float>(), 0.0f);
  EXPECT_EQ(ours.d_hidden.abs().max().item<float>(), 0.0f);
  EXPECT_EQ(ours.d_weight.abs().max().item<float>(), 0.0f);
}

TEST_P(TiledCrossEntropyGpuDtypeTest, ZeroTokensGiveZeroLossAndZeroWeightGradient) {
  CHUNKFLOW_SKIP_WITHOUT_CUDA();
  const torch::ScalarType dtype = GetParam();
  const auto options = torch::TensorOptions().device(torch::kCUDA).dtype(dtype);
  const Outputs ours =
      run_launchers(torch::empty({0, 16}, options), torch::randn({5, 16}, options),
                    torch::empty({0}, options.dtype(torch::kInt64)), 64, 1.0f);
  EXPECT_EQ(ours.loss.item<float>(), 0.0f);
  EXPECT_EQ(ours.d_weight.abs().max().item<float>(), 0.0f);
}

TEST_P(TiledCrossEntropyGpuDtypeTest, AutogradMatchesTorchWithinFlashAttentionRule) {
  CHUNKFLOW_SKIP_WITHOUT_CUDA();
  const torch::ScalarType dtype = GetParam();
  const Problem problem = make_problem(300, 5003, 64);
  const torch::Tensor hidden = problem.hidden.to(dtype).requires_grad_(true);
  const torch::Tensor weight = problem.weight.to(dtype).requires_grad_(true);
  constexpr double kGradLoss = 0.37;
  const torch::Tensor loss = tiled_cross_entropy_sum(hidden, weight, problem.labels, 128);
  EXPECT_EQ(loss.dim(), 0);
  EXPECT_EQ(loss.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(loss.is_cuda());
  (loss * kGradLoss).backward();
  ASSERT_TRUE(hidden.grad().defined() && weight.grad().defined());
  EXPECT_EQ(hidden.grad().scalar_type(), dtype);
  EXPECT_EQ(weight.grad().scalar_type(), dtype);

  const Outputs plain = torch_cross_entropy(hidden, weight, problem.labels, kGradLoss);
  const Outputs reference = torch_cross_entropy(
      hidden.detach().to(torch::kFloat64), weight.detach().to(torch::kFloat64), problem.labels,
      kGradLoss);
  const std::string what = "autograd, " + dtype_name(dtype);
  expect_within_rule(what + " loss", loss.detach(), plain.loss, reference.loss, 2.0);
  expect_within_rule(what + " d_hidden", hidden.grad(), plain.d_hidden, reference.d_hidden, 3.0);
  expect_within_rule(what + " d_weight", weight.grad(), plain.d_weight, reference.d_weight, 3.0);
}

TEST_P(TiledCrossEntropyGpuDtypeTest, RepeatedRunsAreBitwiseEqual) {
  CHUNKFLOW_SKIP_WITHOUT_CUDA();
  const torch::ScalarType dtype = GetParam();
  const Problem problem = make_problem(1025, 32003, 64);
  const torch::Tensor hidden = problem.hidden.to(dtype), weight = problem.weight.to(dtype);
  const Outputs first = run_launchers(hidden, weight, problem.labels, 256, 1.0f);
  const Outputs second = run_launchers(hidden, weight, problem.labels, 256, 1.0f);
  EXPECT_TRUE(torch::equal(first.loss, second.loss));
  EXPECT_TRUE(torch::equal(first.lse, second.lse));
  EXPECT_TRUE(torch::equal(first.d_hidden, second.d_hidden));
  EXPECT_TRUE(torch::equal(first.d_weight, second.d_weight));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, TiledCrossEntropyGpuDtypeTest,
                         ::testing::Values(torch::kFloat32, torch::kBFloat16, torch::kFloat16),
                         [](const ::testing::TestParamInfo<torch::ScalarType>& dtype_info) {
                           return dtype_name(dtype_info.param);
                         });

TEST_F(TiledCrossEntropyGpuTest, FrozenWeightGivesTheSameHiddenGradient) {
  CHUNKFLOW_SKIP_WITHOUT_CUDA();
  const Problem problem = make_problem(200, 1000, 32);
  const torch::Tensor trained_hidden = problem.hidden.to(torch::kBFloat16).requires_grad_(true);
  const torch::Tensor trained_weight = problem.weight.to(torch::kBFloat16).requires_grad_(true);
  tiled_cross_entropy_sum(trained_hidden, trained_weight, problem.labels, 64).backward();
  const torch::Tensor hidden = problem.hidden.to(torch::kBFloat16).requires_grad_(true);
  const torch::Tensor frozen_weight = problem.weight.to(torch::kBFloat16);
  tiled_cross_entropy_sum(hidden, frozen_weight, problem.labels, 64).backward();
  ASSERT_TRUE(hidden.grad().defined());
  EXPECT_FALSE(frozen_weight.grad().defined());
  EXPECT_TRUE(torch::equal(hidden.grad(), trained_hidden.grad()));
}

TEST_F(TiledCrossEntropyGpuTest, AcceptsCpuAndInt32LabelsForCudaInputs) {
  CHUNKFLOW_SKIP_WITHOUT_CUDA();
  const Problem problem = make_problem(100, 1000, 32);
  const torch::Tensor on_device =
      tiled_cross_entropy_sum(problem.hidden, problem.weight, problem.labels, 32);
  const torch::Tensor from_cpu_int32 = tiled_cross_entropy_sum(
      problem.hidden, problem.weight, problem.labels.cpu().to(torch::kInt32), 32);
  EXPECT_TRUE(from_cpu_int32.is_cuda());
  EXPECT_TRUE(torch::equal(on_device, from_cpu_int32));
}

// Expects `call` to throw core::Error whose message contains every one of `parts`.
template <typename Call>
void expect_error_mentioning(Call call, const std::vector<std::string>& parts) {
  try {
    call();
    ADD_FAILURE() << "expected core::Error";
  } catch (const core::Error& error) {
    const std::string message = error.what();
    for (const std::string& part : parts) {
      EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' not in: " << message;
    }
  }
}

TEST_F(TiledCrossEntropyGpuTest, RejectsBadLabelsDtypesAndDevicesNamingTheRule) {
  CHUNKFLOW_SKIP_WITHOUT_CUDA();
  const Problem problem = make_problem(20, 1000, 8, 0.0);
  torch::Tensor too_large = problem.labels.clone();
  too_large[13] = 1000;
  expect_error_mentioning(
      [&] { tiled_cross_entropy_sum(problem.hidden, problem.weight, too_large, 8); },
      {"labels[13]", "1000", "-100"});
  torch::Tensor negative = problem.labels.clone();
  negative[4] = -1;
  expect_error_mentioning(
      [&] { tiled_cross_entropy_sum(problem.hidden, problem.weight, negative, 8); },
      {"labels[4]", "-1"});
  expect_error_mentioning(
      [&] {
        tiled_cross_entropy_sum(problem.hidden.to(torch::kBFloat16), problem.weight,
                                problem.labels, 8);
      },
      {"share a dtype", "BFloat16", "Float"});
  expect_error_mentioning(
      [&] {
        tiled_cross_entropy_sum(problem.hidden.to(torch::kFloat64),
                                problem.weight.to(torch::kFloat64), problem.labels, 8);
      },
      {"float32, bfloat16 or float16", "Double"});
  expect_error_mentioning(
      [&] { tiled_cross_entropy_sum(problem.hidden, problem.weight.cpu(), problem.labels, 8); },
      {"one device", "cuda", "cpu"});

  // The launcher's own checks, for callers that skip the adapter.
  TiledCrossEntropyParams params;
  params.hidden = problem.hidden.const_data_ptr();
  params.weight = problem.weight.const_data_ptr();
  params.labels = problem.labels.const_data_ptr<int64_t>();
  params.tokens = 20;
  params.hidden_size = 8;
  params.vocab = 1000;
  TiledCrossEntropyForwardWorkspace workspace;
  expect_error_mentioning([&] { tiled_cross_entropy_forward_cuda(params, workspace, nullptr); },
                          {"workspace.logits", "must not be null"});
}

TEST_F(TiledCrossEntropyGpuTest, LargeVocabStaysWithinTileMemoryBudget) {
  CHUNKFLOW_SKIP_WITHOUT_CUDA();
  // Full fp32 logits would be 4096 x 32000 x 4 B = 524 MB; a 256-token tile is 33 MB.
  const int64_t tokens = 4096, vocab = 32000, hidden_size = 64, tile_tokens = 256;
  const Problem problem = make_problem(tokens, vocab, hidden_size);
  const torch::Tensor hidden = problem.hidden.to(torch::kBFloat16).requires_grad_(true);
  const torch::Tensor weight = problem.weight.to(torch::kBFloat16).requires_grad_(true);
  const c10::DeviceIndex device = hidden.device().index();

  torch::cuda::synchronize();
  c10::cuda::CUDACachingAllocator::resetPeakStats(device);
  const auto aggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
  const int64_t baseline =
      c10::cuda::CUDACachingAllocator::getDeviceStats(device).allocated_bytes[aggregate].current;
  const torch::Tensor loss = tiled_cross_entropy_sum(hidden, weight, problem.labels, tile_tokens);
  loss.backward();
  torch::cuda::synchronize();
  const int64_t peak =
      c10::cuda::CUDACachingAllocator::getDeviceStats(device).allocated_bytes[aggregate].peak -
      baseline;

  const int64_t full_logits = tokens * vocab * 4, tile_logits = tile_tokens * vocab * 4;
  // bf16 gradients plus the fp32 d_weight sum, all bounded by fp32 sizes.
  const int64_t gradients = 2 * (tokens + vocab) * hidden_size * 4;
  std::cout << "peak allocated during forward + backward: " << peak / 1e6 << " MB (tile logits "
            << tile_logits / 1e6 << " MB, full logits " << full_logits / 1e6 << " MB)\n";
  EXPECT_GE(peak, tile_logits);  // the tile's logits were seen, or nothing was measured
  EXPECT_LE(peak, 2 * tile_logits + gradients);
  EXPECT_TRUE(torch::isfinite(hidden.grad()).all().item<bool>());
  EXPECT_TRUE(torch::isfinite(weight.grad()).all().item<bool>());
  EXPECT_GT(weight.grad().abs().max().item<float>(), 0.0f);
}

}  // namespace
}  // namespace chunkflow::kernels

#endif  // CHUNKFLOW_WITH_CUDA
