// The core promise: training on chunks (packed, split, any chunk_size, any resident_chunks) gives
// the loss and every parameter gradient of plain unchunked training, to 1e-5 relative in fp32.
// The reference runs each sequence whole with dense masked attention written with plain tensor
// ops (tests/support/reference_model.h), in float64, so the comparison measures ChunkFlow's fp32
// error against the exact result. A gradient may exceed 1e-5 only where plain unchunked fp32
// training itself is that far from float64 (ChunkFlow's error then at most 2x plain fp32's, as in
// FlashAttention's rule): fp32 cannot do better on an ill-conditioned sum.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>

#include "core/error.h"
#include "core/random.h"
#include "data/chunk_inputs.h"
#include "data/chunk_plan.h"
#include "models/chunk_batch.h"
#include "models/transformer.h"
#include "tests/support/reference_model.h"
#include "tests/support/test_seed.h"
#include "trainer/chunk_scheduler.h"
#include "trainer/trainer.h"

namespace chunkflow::trainer {
namespace {

struct CaseResult {
  double loss_error = 0;
  double worst_gradient_error = 0;
  // Worst of error / allowed, allowed = max(1e-5, 2 x plain fp32 training's error); <= 1 passes.
  double worst_gradient_ratio = 0;
  std::string worst_parameter;
  int64_t chunks = 0, recomputes = 0, split_sequences = 0;
};

configs::ModelConfig small_model(core::Rng& rng) {
  configs::ModelConfig config;
  config.vocab_size = 40 + static_cast<int64_t>(rng.below(30));
  config.hidden_size = 32;
  config.intermediate_size = 40;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 4;
  config.num_key_value_heads = std::vector<int64_t>{1, 2, 4}[rng.below(3)];
  config.rope_theta = rng.uniform() < 0.5 ? 10000.0 : 1000000.0;
  // Scaled RoPE (yarn also scales cos/sin) rotates the K/V state's rows as the chunk's own.
  config.rope_type = std::vector<std::string>{"default", "linear", "llama3", "yarn"}[rng.below(4)];
  if (config.rope_type != "default") {
    config.rope_factor = 2.0 + static_cast<double>(rng.below(7));
    config.rope_original_max_position_embeddings = 16;
  }
  config.tie_word_embeddings = rng.uniform() < 0.3;
  config.family = rng.uniform() < 0.5 ? "llama" : "qwen2";
  config.attention_bias = config.family == "qwen2" || rng.uniform() < 0.3;
  config.initializer_range = 0.2;  // large enough that attention is far from uniform
  return config;
}

std::vector<testing::ReferenceSequence> random_batch(core::Rng& rng, int64_t chunk_size, int64_t vocab) {
  std::vector<testing::ReferenceSequence> batch;
  const int64_t count = 2 + static_cast<int64_t>(rng.below(8));
  for (int64_t i = 0; i < count; ++i) {
    const int64_t length = rng.uniform() < 0.4 ? 1 + static_cast<int64_t>(rng.below(static_cast<uint64_t>(8 * chunk_size)))
                                               : 1 + static_cast<int64_t>(rng.below(static_cast<uint64_t>(chunk_size)));
    testing::ReferenceSequence sequence;
    for (int64_t t = 0; t < length; ++t) sequence.tokens.push_back(static_cast<int64_t>(rng.below(static_cast<uint64_t>(vocab))));
    if (rng.uniform() < 0.3) {
      for (int64_t t = 0; t < length; ++t) sequence.loss_mask.push_back(rng.uniform() < 0.6 ? 1 : 0);
    }
    batch.push_back(std::move(sequence));
  }
  return batch;
}

// Relative error of one gradient tensor against float64. The denominator is the tensor's own
// reference norm, but at least the norm it would have if the whole model's gradient were spread
// evenly over all elements (its even share). k_proj.bias's gradient nearly cancels (softmax ignores
// a shift common to all keys; only RoPE breaks the symmetry): it is a small difference of large
// per-token terms, and fp32 rounds those terms, not their small sum, so its error against its own
// tiny norm is noise that chunked and plain fp32 training draw alike (seen: chunked 1.3e-5 where plain
// had 5.8e-6, on a norm of 0.4 of its even share; plain 1.5e-5 in another case). With a floor of a
// tenth of the even share (this test until 2026-12-04) a CI run failed on that noise (the worst
// error / allowed of 17 random seeds: 1.11). A real
// error (a prefix term dropped, a chunk counted twice) is of the tensor's own size, 1e3-1e4 times
// the tolerance either way.
double gradient_error(const torch::Tensor& got, const torch::Tensor& want, double model_norm, int64_t model_numel) {
  const double even_share =
      model_norm * std::sqrt(static_cast<double>(want.numel()) / static_cast<double>(model_numel));
  const double scale = std::max(want.norm().item<double>(), even_share);
  const double difference = (got - want).norm().item<double>();
  return scale > 0 ? difference / scale : difference;
}

// The plan and scheduler settings of one case; the defaults are ChunkFlow's own strategy.
struct Strategy {
  std::string name = "chunkflow";
  int64_t micro_batch_sequences = 1;
  bool recompute_layers = false;
};

CaseResult run_case(const configs::ModelConfig& config, const std::vector<testing::ReferenceSequence>& batch,
                    int64_t chunk_size, int64_t resident_chunks, bool pack_into_tail, uint64_t seed,
                    const Strategy& strategy = {}) {
  torch::manual_seed(seed);
  models::CausalLM model(config);

  std::vector<data::PlanSequence> plan_sequences;
  for (const auto& sequence : batch) {
    plan_sequences.push_back({static_cast<int64_t>(sequence.tokens.size()), sequence.loss_mask});
  }
  configs::ChunkingConfig chunking;
  chunking.chunk_size = chunk_size;
  chunking.pack_into_tail = pack_into_tail;
  chunking.strategy = strategy.name;
  chunking.micro_batch_sequences = strategy.micro_batch_sequences;
  const data::ChunkPlan plan = build_step_plan(chunking, plan_sequences);
  const data::TokenReader reader = [&](int32_t sequence, int64_t begin, int64_t count, int32_t* out) {
    for (int64_t i = 0; i < count; ++i) out[i] = static_cast<int32_t>(batch[static_cast<size_t>(sequence)].tokens[static_cast<size_t>(begin + i)]);
  };
  const ChunkBatchSource source = [&](int32_t chunk) {
    return models::make_chunk_batch(data::gather_chunk_inputs(plan, chunk, plan_sequences, reader), torch::kCPU);
  };

  CaseResult result;
  result.chunks = static_cast<int64_t>(plan.chunks().size());
  result.split_sequences = plan.split_sequences();
  if (plan.loss_tokens() == 0) return result;

  model->zero_grad();
  ChunkScheduler scheduler(model, resident_chunks, PipelineStage{}, strategy.recompute_layers);
  const LossTotals totals = scheduler.run_plan(plan, source, 1.0 / static_cast<double>(plan.loss_tokens()));
  EXPECT_EQ(totals.loss_tokens, plan.loss_tokens());
  result.recomputes = totals.chunk_recomputes;
  const double chunked_loss = totals.loss_sum / static_cast<double>(totals.loss_tokens);
  std::vector<torch::Tensor> chunked_gradients;
  for (const auto& parameter : model->parameters()) chunked_gradients.push_back(parameter.grad().clone());

  // The reference runs in float64 on float64 copies of the same weights: the comparison then
  // measures ChunkFlow's fp32 error against the exact result, not against another fp32 rounding.
  torch::OrderedDict<std::string, torch::Tensor> exact_parameters;
  for (const auto& item : model->named_parameters()) {
    exact_parameters.insert(item.key(), item.value().detach().to(torch::kFloat64).requires_grad_(true));
  }
  const torch::Tensor reference = testing::reference_mean_loss(exact_parameters, config, batch);
  reference.backward();
  // Plain unchunked training in fp32, for the noise floor of each gradient.
  torch::OrderedDict<std::string, torch::Tensor> plain_parameters;
  for (const auto& item : model->named_parameters()) {
    plain_parameters.insert(item.key(), item.value().detach().clone().requires_grad_(true));
  }
  testing::reference_mean_loss(plain_parameters, config, batch).backward();
  result.loss_error = std::abs(chunked_loss - reference.item<double>()) / std::abs(reference.item<double>());
  double model_norm_squared = 0;
  int64_t model_numel = 0;
  for (const auto& item : exact_parameters) {
    model_norm_squared += item.value().grad().pow(2).sum().item<double>();
    model_numel += item.value().numel();
  }
  size_t index = 0;
  for (const auto& item : exact_parameters) {
    const double error = gradient_error(chunked_gradients[index++].to(torch::kFloat64), item.value().grad(),
                                        std::sqrt(model_norm_squared), model_numel);
    const double plain_error = gradient_error(plain_parameters[item.key()].grad().to(torch::kFloat64),
                                              item.value().grad(), std::sqrt(model_norm_squared), model_numel);
    const double ratio = error / std::max(1e-5, 2.0 * plain_error);
    result.worst_gradient_error = std::max(result.worst_gradient_error, error);
    if (ratio > result.worst_gradient_ratio) {
      result.worst_gradient_ratio = ratio;
      result.worst_parameter = item.key();
    }
  }
  return result;
}

// testing::pick_seed (CHUNKFLOW_TEST_SEED when set), printed so that a failure can be replayed.
uint64_t fresh_seed() {
  const uint64_t seed = testing::pick_seed();
  std::printf("seed %llu (replay with CHUNKFLOW_TEST_SEED=%llu)\n", static_cast<unsigned long long>(seed),
              static_cast<unsigned long long>(seed));
  return seed;
}

TEST(SchedulerExactnessTest, ChunkedTrainingMatchesWholeSequenceTrainingOnRandomBatches) {
  const uint64_t seed = fresh_seed();
  core::Rng rng(seed);
  double worst_loss = 0, worst_gradient = 0, worst_ratio = 0;
  int64_t cases = 0, recomputes = 0, split = 0;
  for (const int64_t chunk_size : {7, 64, 100}) {
    const auto started = std::chrono::steady_clock::now();
    for (const int64_t resident : {1, 2, 1000}) {
      for (int trial = 0; trial < 8; ++trial) {
        const configs::ModelConfig config = small_model(rng);
        const auto batch = random_batch(rng, chunk_size, config.vocab_size);
        const CaseResult result = run_case(config, batch, chunk_size, resident, trial % 4 != 3, rng.next_u64());
        ASSERT_LE(result.loss_error, 1e-5) << "chunk_size " << chunk_size << " K " << resident << " seed " << seed;
        ASSERT_LE(result.worst_gradient_ratio, 1.0)
            << result.worst_parameter << " (error " << result.worst_gradient_error << ") chunk_size " << chunk_size
            << " K " << resident << " seed " << seed;
        if (result.worst_gradient_error > 5e-6) {
          std::printf("  case chunk_size %lld K %lld: error %.3g, worst error / allowed %.3g in %s\n",
                      static_cast<long long>(chunk_size), static_cast<long long>(resident),
                      result.worst_gradient_error, result.worst_gradient_ratio, result.worst_parameter.c_str());
        }
        worst_loss = std::max(worst_loss, result.loss_error);
        worst_gradient = std::max(worst_gradient, result.worst_gradient_error);
        worst_ratio = std::max(worst_ratio, result.worst_gradient_ratio);
        recomputes += result.recomputes;
        split += result.split_sequences;
        ++cases;
      }
    }
    std::printf("chunk_size %lld: %.1f s\n", static_cast<long long>(chunk_size),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  }
  std::printf("%lld cases (%lld split sequences, %lld recomputed chunks): worst relative error loss %.3g, gradient %.3g (error / allowed %.3g)\n",
              static_cast<long long>(cases), static_cast<long long>(split), static_cast<long long>(recomputes),
              worst_loss, worst_gradient, worst_ratio);
  EXPECT_GT(recomputes, 0) << "the recompute pass was never exercised";
  EXPECT_GT(split, 0);
}

TEST(SchedulerExactnessTest, OneLongSequenceSplitIntoManyChunksWithEveryResidency) {
  // N = 9 dependent chunks: K = 1 recomputes 8 chunks in descending order, the case where an
  // ascending recompute pass would be wrong.
  core::Rng rng(fresh_seed());
  const configs::ModelConfig config = small_model(rng);
  std::vector<testing::ReferenceSequence> batch(1);
  for (int t = 0; t < 61; ++t) batch[0].tokens.push_back(static_cast<int64_t>(rng.below(static_cast<uint64_t>(config.vocab_size))));
  for (const int64_t resident : {1, 2, 3, 8, 9}) {
    const CaseResult result = run_case(config, batch, 7, resident, true, 11);
    EXPECT_EQ(result.chunks, 9);
    EXPECT_EQ(result.recomputes, std::max<int64_t>(0, 9 - resident));
    EXPECT_LE(result.loss_error, 1e-5) << "K " << resident;
    EXPECT_LE(result.worst_gradient_ratio, 1.0) << result.worst_parameter << " K " << resident;
  }
}

TEST(SchedulerExactnessTest, SequencesOfLengthZeroAndOneContributeNothingAndBreakNothing) {
  core::Rng rng(fresh_seed());
  const configs::ModelConfig config = small_model(rng);
  std::vector<testing::ReferenceSequence> batch(4);
  batch[1].tokens = {3};
  for (int t = 0; t < 20; ++t) batch[2].tokens.push_back(t % config.vocab_size);
  batch[3].tokens = {5, 6};
  const CaseResult result = run_case(config, batch, 8, 1, true, 5);
  EXPECT_LE(result.loss_error, 1e-5);
  EXPECT_LE(result.worst_gradient_ratio, 1.0) << result.worst_parameter;
}

// The baselines of docs/performance.md train the same loss and gradients: pad-to-longest
// micro-batches (padding rows attend to their sequence and carry no loss), pack-to-max-length
// chunks, and full layer recomputation (alone, with packing, and next to split sequences).
TEST(SchedulerExactnessTest, BaselineStrategiesMatchWholeSequenceTraining) {
  const uint64_t seed = fresh_seed();
  core::Rng rng(seed);
  int64_t padded_cases = 0, recompute_cases = 0;
  for (int trial = 0; trial < 12; ++trial) {
    const configs::ModelConfig config = small_model(rng);
    const int64_t longest_allowed = 3 + static_cast<int64_t>(rng.below(90));
    auto batch = random_batch(rng, longest_allowed, config.vocab_size);
    int64_t longest = 1;
    for (const auto& sequence : batch) longest = std::max<int64_t>(longest, static_cast<int64_t>(sequence.tokens.size()));

    Strategy padded;
    padded.name = "pad_to_longest";
    padded.micro_batch_sequences = 1 + static_cast<int64_t>(rng.below(4));
    padded.recompute_layers = trial % 3 == 0;
    const CaseResult pad = run_case(config, batch, longest, 1, false, rng.next_u64(), padded);
    EXPECT_LE(pad.loss_error, 1e-5) << "pad_to_longest, micro-batch " << padded.micro_batch_sequences << ", seed " << seed;
    EXPECT_LE(pad.worst_gradient_ratio, 1.0)
        << pad.worst_parameter << " pad_to_longest, micro-batch " << padded.micro_batch_sequences << ", seed " << seed;

    Strategy packed;
    packed.name = "pack_to_max";
    packed.recompute_layers = true;
    const int64_t context = longest + static_cast<int64_t>(rng.below(50));
    const CaseResult pack = run_case(config, batch, context, 1, false, rng.next_u64(), packed);
    EXPECT_EQ(pack.split_sequences, 0);
    EXPECT_LE(pack.loss_error, 1e-5) << "pack_to_max + recompute_layers, context " << context << ", seed " << seed;
    EXPECT_LE(pack.worst_gradient_ratio, 1.0) << pack.worst_parameter << " pack_to_max, seed " << seed;

    // ChunkFlow with layer recomputation on its standalone chunks, split sequences beside them.
    Strategy chunked;
    chunked.recompute_layers = true;
    const int64_t chunk_size = std::max<int64_t>(2, longest / 3);
    const CaseResult chunk = run_case(config, batch, chunk_size, 1 + trial % 2, true, rng.next_u64(), chunked);
    EXPECT_LE(chunk.loss_error, 1e-5) << "chunkflow + recompute_layers, seed " << seed;
    EXPECT_LE(chunk.worst_gradient_ratio, 1.0) << chunk.worst_parameter << " chunkflow + recompute_layers, seed " << seed;
    padded_cases += padded.micro_batch_sequences > 1;
    recompute_cases += 2 + padded.recompute_layers;
  }
  EXPECT_GT(padded_cases, 0) << "no micro-batch held more than one sequence";
  std::printf("%lld cases with layer recomputation\n", static_cast<long long>(recompute_cases));
}

TEST(SchedulerExactnessTest, PackToMaxRefusesASequenceLongerThanTheContext) {
  configs::ChunkingConfig chunking;
  chunking.strategy = "pack_to_max";
  chunking.chunk_size = 8;
  const std::vector<data::PlanSequence> sequences = {{5, {}}, {9, {}}};
  try {
    build_step_plan(chunking, sequences);
    FAIL() << "a 9-token sequence was accepted with chunk_size 8";
  } catch (const core::Error& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("sequence 1"), std::string::npos) << message;
    EXPECT_NE(message.find("chunking.chunk_size 8"), std::string::npos) << message;
  }
}

}  // namespace
}  // namespace chunkflow::trainer
