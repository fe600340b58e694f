// The tiled cross-entropy (kernel and torch adapter) against PyTorch's cross_entropy on full
// logits: loss, per-token lse and both gradients in fp32, tile remainders, ignored labels, the
// error messages, and the bound on the memory the kernel allocates. Fresh random data each run;
// the seed is printed, and CHUNKFLOW_TEST_SEED=<seed> repeats a run.
#include <c10/core/CPUAllocator.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernels/cross_entropy_torch.h"
#include "kernels/device.h"
#include "kernels/tiled_cross_entropy.h"
#include "tests/support/test_seed.h"

namespace chunkflow::kernels {
namespace {

namespace F = torch::nn::functional;

constexpr double kTolerance = 1e-5;  // fp32 relative error, design section 8

uint64_t fresh_seed() { return chunkflow::testing::pick_seed(); }

// Seeds torch's generator per test and prints the seed so a failure can be repeated.
class TiledCrossEntropyTest : public ::testing::Test {
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
  torch::Tensor hidden;  // [tokens, hidden_size] float32, requires grad
  torch::Tensor weight;  // [vocab, hidden_size] float32, requires grad
  torch::Tensor labels;  // [tokens] int64, about ignored_fraction of them -100
};

Problem make_problem(int64_t tokens, int64_t vocab, int64_t hidden_size,
                     double ignored_fraction = 0.2) {
  Problem problem;
  problem.hidden = torch::randn({tokens, hidden_size}).requires_grad_(true);
  // Logits with a standard deviation near 3, so the softmax is far from uniform.
  problem.weight = (torch::randn({vocab, hidden_size}) * (3.0 / std::sqrt(hidden_size)))
                       .requires_grad_(true);
  problem.labels = torch::randint(0, vocab, {tokens}, torch::kInt64)
                       .masked_fill(torch::rand({tokens}) < ignored_fraction, kIgnoreIndex);
  return problem;
}

torch::Tensor reference_loss_sum(const torch::Tensor& hidden, const torch::Tensor& weight,
                                 const torch::Tensor& labels) {
  return F::cross_entropy(
      hidden.matmul(weight.t()), labels,
      F::CrossEntropyFuncOptions().reduction(torch::kSum).ignore_index(kIgnoreIndex));
}

// max |actual - expected| / max |expected|; exact equality counts as 0 even when both are 0.
double relative_error(const torch::Tensor& actual, const torch::Tensor& expected) {
  const double difference = (actual - expected).abs().max().item<double>();
  if (difference == 0.0) return 0.0;
  return difference / std::max(expected.abs().max().item<double>(), 1e-30);
}

struct Gradients {
  torch::Tensor loss, d_hidden, d_weight;
};

// Runs loss * grad_scale backward on fresh leaves copied from the problem.
template <typename LossFn>
Gradients loss_and_gradients(const Problem& problem, double grad_scale, LossFn loss_fn) {
  const torch::Tensor hidden = problem.hidden.detach().clone().requires_grad_(true);
  const torch::Tensor weight = problem.weight.detach().clone().requires_grad_(true);
  const torch::Tensor loss = loss_fn(hidden, weight, problem.labels);
  (loss * grad_scale).backward();
  return {loss.detach(), hidden.grad(), weight.grad()};
}

struct Errors {
  double loss, d_hidden, d_weight;
};

Errors compare_with_reference(const Problem& problem, int64_t tile_tokens,
                              double grad_scale = 1.0) {
  const Gradients ours = loss_and_gradients(
      problem, grad_scale, [&](const auto& hidden, const auto& weight, const auto& labels) {
        return tiled_cross_entropy_sum(hidden, weight, labels, tile_tokens);
      });
  const Gradients reference = loss_and_gradients(problem, grad_scale, reference_loss_sum);
  EXPECT_EQ(ours.loss.dim(), 0);
  EXPECT_EQ(ours.loss.scalar_type(), torch::kFloat32);
  return {relative_error(ours.loss, reference.loss),
          relative_error(ours.d_hidden, reference.d_hidden),
          relative_error(ours.d_weight, reference.d_weight)};
}

void expect_within_tolerance(const Errors& errors, const std::string& what) {
  std::cout << what << ": relative error loss " << errors.loss << ", d_hidden " << errors.d_hidden
            << ", d_weight " << errors.d_weight << "\n";
  EXPECT_LE(errors.loss, kTolerance) << what;
  EXPECT_LE(errors.d_hidden, kTolerance) << what;
  EXPECT_LE(errors.d_weight, kTolerance) << what;
}

struct ShapeCase {
  int64_t tokens, vocab, hidden_size, tile_tokens;
};

void PrintTo(const ShapeCase& shape, std::ostream* out) {
  *out << "{tokens " << shape.tokens << ", vocab " << shape.vocab << ", hidden_size "
       << shape.hidden_size << ", tile_tokens " << shape.tile_tokens << "}";
}

class TiledCrossEntropyShapesTest : public TiledCrossEntropyTest,
                                    public ::testing::WithParamInterface<ShapeCase> {};

TEST_P(TiledCrossEntropyShapesTest, MatchesTorchLossAndGradients) {
  const ShapeCase shape = GetParam();
  const Problem problem = make_problem(shape.tokens, shape.vocab, shape.hidden_size);
  expect_within_tolerance(compare_with_reference(problem, shape.tile_tokens),
                          std::to_string(shape.tokens) + " tokens, vocab " +
                              std::to_string(shape.vocab) + ", tile " +
                              std::to_string(shape.tile_tokens));
}

// Token counts below, equal to, and not a multiple of the tile; vocabularies small and odd.
INSTANTIATE_TEST_SUITE_P(
    TileRemainders, TiledCrossEntropyShapesTest,
    ::testing::Values(ShapeCase{1, 5, 8, 64}, ShapeCase{7, 512, 16, 64},
                      ShapeCase{7, 5, 8, 1}, ShapeCase{64, 1000, 32, 64},
                      ShapeCase{1000, 1000, 48, 64}, ShapeCase{1025, 512, 32, 1024},
                      ShapeCase{1025, 1000, 32, 64}, ShapeCase{1000, 5, 16, 1024},
                      ShapeCase{33, 32000, 16, 16}),
    [](const ::testing::TestParamInfo<ShapeCase>& shape_info) {
      return "Tokens" + std::to_string(shape_info.param.tokens) + "Vocab" +
             std::to_string(shape_info.param.vocab) + "Tile" + std::to_string(shape_info.param.tile_tokens);
    });

TEST_F(TiledCrossEntropyTest, AllIgnoredLabelsGiveZeroLossAndZeroGradients) {
  const Problem problem = make_problem(130, 512, 16, /*ignored_fraction=*/1.0);
  const Gradients ours = loss_and_gradients(
      problem, 1.0, [](const auto& hidden, const auto& weight, const auto& labels) {
        return tiled_cross_entropy_sum(hidden, weight, labels, 64);
      });
  EXPECT_EQ(ours.loss.item<float>(), 0.0f);
  EXPECT_EQ(ours.d_hidden.abs().max().item<float>(), 0.0f);
  EXPECT_EQ(ours.d_weight.abs().max().item<float>(), 0.0f);
  EXPECT_EQ(reference_loss_sum(problem.hidden, problem.weight, problem.labels).item<float>(),
            0.0f);
}

TEST_F(TiledCrossEntropyTest, OnlyIgnoredTilesAreSkippedNotTheirNeighbours) {
  // Tokens 0..63 (one whole tile) ignored, the rest labelled: the skip must be per tile.
  Problem problem = make_problem(200, 1000, 16, /*ignored_fraction=*/0.0);
  problem.labels.narrow(0, 0, 64).fill_(kIgnoreIndex);
  expect_within_tolerance(compare_with_reference(problem, 64), "first tile ignored");
}

TEST_F(TiledCrossEntropyTest, ScaledLossScalesBothGradients) {
  const Problem problem = make_problem(300, 1000, 32);
  expect_within_tolerance(compare_with_reference(problem, 64, /*grad_scale=*/0.37),
                          "loss * 0.37");
  const auto loss_fn = [](const auto& hidden, const auto& weight, const auto& labels) {
    return tiled_cross_entropy_sum(hidden, weight, labels, 64);
  };
  const Gradients unit = loss_and_gradients(problem, 1.0, loss_fn);
  const Gradients scaled = loss_and_gradients(problem, 0.37, loss_fn);
  EXPECT_LE(relative_error(scaled.d_hidden, unit.d_hidden * 0.37), kTolerance);
  EXPECT_LE(relative_error(scaled.d_weight, unit.d_weight * 0.37), kTolerance);
}

TEST_F(TiledCrossEntropyTest, FrozenWeightStillGivesHiddenGradient) {
  const Problem problem = make_problem(100, 512, 16);
  const torch::Tensor hidden = problem.hidden.detach().clone().requires_grad_(true);
  const torch::Tensor weight = problem.weight.detach().clone();  // frozen LM head
  tiled_cross_entropy_sum(hidden, weight, problem.labels, 32).backward();
  EXPECT_FALSE(weight.grad().defined());

  const torch::Tensor reference_hidden = problem.hidden.detach().clone().requires_grad_(true);
  reference_loss_sum(reference_hidden, weight, problem.labels).backward();
  EXPECT_LE(relative_error(hidden.grad(), reference_hidden.grad()), kTolerance);
}

TEST_F(TiledCrossEntropyTest, Int32LabelsGiveTheSameResultAsInt64) {
  const Problem problem = make_problem(77, 512, 16);
  const torch::Tensor hidden = problem.hidden.detach();
  const torch::Tensor weight = problem.weight.detach();
  const float with_int64 = tiled_cross_entropy_sum(hidden, weight, problem.labels, 16).item<float>();
  const float with_int32 =
      tiled_cross_entropy_sum(hidden, weight, problem.labels.to(torch::kInt32), 16).item<float>();
  EXPECT_EQ(with_int32, with_int64);
  EXPECT_GT(with_int64, 0.0f);
}

TEST_F(TiledCrossEntropyTest, LossDoesNotDependOnTileSize) {
  const Problem problem = make_problem(500, 1000, 32);
  const torch::Tensor hidden = problem.hidden.detach();
  const torch::Tensor weight = problem.weight.detach();
  const torch::Tensor whole = tiled_cross_entropy_sum(hidden, weight, problem.labels, 500);
  for (const int64_t tile_tokens : {7, 64, 499, 4096}) {
    const torch::Tensor tiled = tiled_cross_entropy_sum(hidden, weight, problem.labels, tile_tokens);
    EXPECT_LE(relative_error(tiled, whole), 1e-6) << "tile_tokens " << tile_tokens;
  }
}

TEST_F(TiledCrossEntropyTest, ForwardKernelWritesLogSumExpPerTokenAndZeroForIgnored) {
  const int64_t tokens = 45, vocab = 300, hidden_size = 12;
  const Problem problem = make_problem(tokens, vocab, hidden_size, 0.3);
  const torch::Tensor hidden = problem.hidden.detach().contiguous();
  const torch::Tensor weight = problem.weight.detach().contiguous();
  std::vector<float> lse(tokens, -1.0f);
  float loss_sum = -1.0f;
  TiledCrossEntropyParams params;
  params.hidden = hidden.const_data_ptr();
  params.weight = weight.const_data_ptr();
  params.labels = problem.labels.const_data_ptr<int64_t>();
  params.loss_sum = &loss_sum;
  params.lse = lse.data();
  params.tokens = tokens;
  params.hidden_size = hidden_size;
  params.vocab = vocab;
  params.tile_tokens = 8;
  tiled_cross_entropy_forward_cpu(params);

  const torch::Tensor expected_lse = torch::logsumexp(hidden.matmul(weight.t()), 1);
  const torch::Tensor labelled = problem.labels.ne(kIgnoreIndex);
  const torch::Tensor actual_lse = torch::from_blob(lse.data(), {tokens}, torch::kFloat32);
  EXPECT_LE(relative_error(actual_lse.masked_select(labelled), expected_lse.masked_select(labelled)),
            kTolerance);
  EXPECT_EQ(actual_lse.masked_select(labelled.logical_not()).abs().sum().item<float>(), 0.0f);
  EXPECT_NEAR(loss_sum, reference_loss_sum(hidden, weight, problem.labels).item<float>(),
              kTolerance * std::abs(loss_sum));
}

TEST_F(TiledCrossEntropyTest, ZeroTokensGiveZeroLossAndZeroWeightGradient) {
  const torch::Tensor hidden = torch::randn({0, 16}).requires_grad_(true);
  const torch::Tensor weight = torch::randn({5, 16}).requires_grad_(true);
  const torch::Tensor labels = torch::empty({0}, torch::kInt64);
  const torch::Tensor loss = tiled_cross_entropy_sum(hidden, weight, labels, 64);
  EXPECT_EQ(loss.item<float>(), 0.0f);
  loss.backward();
  ASSERT_TRUE(hidden.grad().defined());
  EXPECT_EQ(hidden.grad().sizes(), hidden.sizes());
  ASSERT_TRUE(weight.grad().defined());
  EXPECT_EQ(weight.grad().abs().max().item<float>(), 0.0f);
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

TEST_F(TiledCrossEntropyTest, RejectsLabelOutsideVocabNamingTheToken) {
  const Problem problem = make_problem(20, 1000, 8, 0.0);
  const torch::Tensor hidden = problem.hidden.detach();
  const torch::Tensor weight = problem.weight.detach();
  torch::Tensor too_large = problem.labels.clone();
  too_large[13] = 1000;
  expect_error_mentioning([&] { tiled_cross_entropy_sum(hidden, weight, too_large, 8); },
                          {"labels[13]", "1000", "-100"});
  torch::Tensor negative = problem.labels.clone();
  negative[4] = -1;
  expect_error_mentioning([&] { tiled_cross_entropy_sum(hidden, weight, negative, 8); },
                          {"labels[4]", "-1"});

  // The kernel's own check, for callers that skip the adapter.
  TiledCrossEntropyBackwardParams params;
  std::vector<float> buffer(20 * 1000, 0.0f);
  params.hidden = params.weight = params.lse = buffer.data();
  params.d_hidden = params.d_weight = buffer.data();
  params.labels = negative.const_data_ptr<int64_t>();
  params.tokens = 20;
  params.hidden_size = 8;
  params.vocab = 1000;
  expect_error_mentioning([&] { check_params(params); }, {"labels[4]", "-1"});
}

TEST_F(TiledCrossEntropyTest, RejectsNonFloat32Inputs) {
  const Problem problem = make_problem(10, 50, 8);
  expect_error_mentioning(
      [&] {
        tiled_cross_entropy_sum(problem.hidden.detach().to(torch::kFloat64),
                                problem.weight.detach(), problem.labels, 4);
      },
      {"float32", "Double"});
  expect_error_mentioning(
      [&] {
        tiled_cross_entropy_sum(problem.hidden.detach(), problem.weight.detach(),
                                problem.labels.to(torch::kFloat32), 4);
      },
      {"labels", "int64"});

  const torch::Tensor hidden = problem.hidden.detach().to(torch::kBFloat16);
  const torch::Tensor weight = problem.weight.detach().to(torch::kBFloat16);
  float loss_sum = 0.0f;
  std::vector<float> lse(10);
  TiledCrossEntropyParams params;
  params.hidden = hidden.const_data_ptr();
  params.weight = weight.const_data_ptr();
  params.labels = problem.labels.const_data_ptr<int64_t>();
  params.loss_sum = &loss_sum;
  params.lse = lse.data();
  params.tokens = 10;
  params.hidden_size = 8;
  params.vocab = 50;
  params.dtype = ScalarType::kBFloat16;
  expect_error_mentioning([&] { tiled_cross_entropy_forward_cpu(params); },
                          {"float32 only", "bfloat16"});
}

TEST_F(TiledCrossEntropyTest, RejectsMismatchedShapes) {
  const torch::Tensor labels = torch::zeros({6}, torch::kInt64);
  expect_error_mentioning(
      [&] { tiled_cross_entropy_sum(torch::randn({6, 8}), torch::randn({50, 9}), labels); },
      {"hidden_size"});
  expect_error_mentioning(
      [&] { tiled_cross_entropy_sum(torch::randn({2, 3, 8}), torch::randn({50, 8}), labels); },
      {"hidden must be [tokens, hidden_size]"});
  expect_error_mentioning(
      [&] {
        tiled_cross_entropy_sum(torch::randn({6, 8}), torch::randn({50, 8}),
                                torch::zeros({5}, torch::kInt64));
      },
      {"labels must be [tokens]", "6"});
  expect_error_mentioning(
      [&] { tiled_cross_entropy_sum(torch::randn({6, 8}), torch::randn({50, 8}), labels, 0); },
      {"tile_tokens must be > 0"});
}

TEST_F(TiledCrossEntropyTest, RejectsCudaTensorsInABuildWithoutCudaKernels) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  if (built_with_cuda()) GTEST_SKIP() << "CUDA build: tiled_cross_entropy_gpu_test covers CUDA";
  const torch::Tensor hidden = torch::randn({4, 8}, torch::kCUDA);
  const torch::Tensor weight = torch::randn({5, 8}, torch::kCUDA);
  expect_error_mentioning(
      [&] {
        tiled_cross_entropy_sum(hidden, weight, torch::zeros({4}, torch::kInt64).cuda());
      },
      {"CUDA", "no CUDA kernels"});
}

TEST_F(TiledCrossEntropyTest, CountsOnlyLabelledTokens) {
  const torch::Tensor labels = torch::tensor({3, -100, 0, -100, 7, 1}, torch::kInt64);
  EXPECT_EQ(count_labelled_tokens(labels), 4);
  EXPECT_EQ(count_labelled_tokens(labels.to(torch::kInt32).view({2, 3})), 4);
  EXPECT_EQ(count_labelled_tokens(torch::full({9}, kIgnoreIndex, torch::kInt64)), 0);
  expect_error_mentioning([&] { count_labelled_tokens(labels.to(torch::kFloat32)); },
                          {"int64"});
}

// Wraps the CPU allocator to record the peak of bytes allocated (and not yet freed) while it is
// installed: every ATen CPU tensor goes through it.
class PeakTrackingAllocator final : public c10::Allocator {
 public:
  static constexpr uint8_t kPriority = 200;

  explicit PeakTrackingAllocator(c10::Allocator* base) : base_(base) {}

  c10::DataPtr allocate(size_t bytes) override {
    c10::DataPtr inner = base_->allocate(bytes);
    void* data = inner.get();
    const c10::Device device = inner.device();
    auto* block = new Block{std::move(inner), bytes, this};
    {
      std::lock_guard<std::mutex> lock(mutex_);
      live_bytes_ += bytes;
      peak_bytes_ = std::max(peak_bytes_, live_bytes_);
    }
    return c10::DataPtr(data, block, &PeakTrackingAllocator::release, device);
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // Starts a new measurement; returns the bytes live now (the baseline of peak_bytes()).
  size_t reset_peak() {
    std::lock_guard<std::mutex> lock(mutex_);
    peak_bytes_ = live_bytes_;
    return live_bytes_;
  }

  size_t peak_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return peak_bytes_;
  }

 private:
  struct Block {
    c10::DataPtr inner;
    size_t bytes;
    PeakTrackingAllocator* owner;
  };

  static void release(void* context) {
    auto* block = static_cast<Block*>(context);
    {
      std::lock_guard<std::mutex> lock(block->owner->mutex_);
      block->owner->live_bytes_ -= block->bytes;
    }
    delete block;  // frees the memory through the base allocator's deleter
  }

  c10::Allocator* base_;
  std::mutex mutex_;
  size_t live_bytes_ = 0, peak_bytes_ = 0;
};

TEST_F(TiledCrossEntropyTest, LargeVocabStaysWithinTileMemoryBudget) {
  // Full fp32 logits would be 4096 x 32000 x 4 B = 524 MB; a 256-token tile is 33 MB.
  const int64_t tokens = 4096, vocab = 32000, hidden_size = 64, tile_tokens = 256;
  const Problem problem = make_problem(tokens, vocab, hidden_size);
  const torch::Tensor hidden = problem.hidden.detach().clone().requires_grad_(true);
  const torch::Tensor weight = problem.weight.detach().clone().requires_grad_(true);

  // Outlives every tensor it allocates, since their deleters point at it.
  static c10::Allocator* const original = c10::GetCPUAllocator();
  static PeakTrackingAllocator* const tracker = new PeakTrackingAllocator(original);
  torch::Tensor loss;
  size_t peak = 0;
  {
    struct Installed {
      Installed() { c10::SetCPUAllocator(tracker, PeakTrackingAllocator::kPriority); }
      ~Installed() { c10::SetCPUAllocator(original, PeakTrackingAllocator::kPriority); }
    } installed;
    const size_t baseline = tracker->reset_peak();
    loss = tiled_cross_entropy_sum(hidden, weight, problem.labels, tile_tokens);
    loss.backward();
    peak = tracker->peak_bytes() - baseline;
  }

  const size_t float_bytes = sizeof(float);
  const size_t full_logits = static_cast<size_t>(tokens * vocab) * float_bytes;
  const size_t tile_logits = static_cast<size_t>(tile_tokens * vocab) * float_bytes;
  const size_t gradients = static_cast<size_t>((tokens + vocab) * hidden_size) * float_bytes;
  std::cout << "peak allocated during forward + backward: " << peak / 1e6 << " MB (tile logits "
            << tile_logits / 1e6 << " MB, full logits " << full_logits / 1e6 << " MB)\n";
  // The tracker must have seen at least the weight gradient, or it measured nothing.
  EXPECT_GE(peak, static_cast<size_t>(vocab * hidden_size) * float_bytes);
  EXPECT_LE(peak, 2 * tile_logits + gradients);

  // Numerics at this vocabulary on a slice (a full reference would cost more than the run).
  {
    torch::NoGradGuard no_grad;
    const torch::Tensor hidden_slice = problem.hidden.detach().narrow(0, 0, 512);
    const torch::Tensor labels_slice = problem.labels.narrow(0, 0, 512);
    const double loss_error = relative_error(
        tiled_cross_entropy_sum(hidden_slice, problem.weight.detach(), labels_slice, tile_tokens),
        reference_loss_sum(hidden_slice, problem.weight.detach(), labels_slice));
    std::cout << "512 x 32000: relative error loss " << loss_error << "\n";
    EXPECT_LE(loss_error, kTolerance);
  }
  EXPECT_TRUE(torch::isfinite(hidden.grad()).all().item<bool>());
  EXPECT_TRUE(torch::isfinite(weight.grad()).all().item<bool>());
  EXPECT_GT(weight.grad().abs().max().item<float>(), 0.0f);
}

}  // namespace
}  // namespace chunkflow::kernels
