// The step planner (trainer/step_planner.h): simulated step time against hand-computed values,
// the memory model's shape, the recommendation rule, histogram and size parsing, and the
// calibration's round trip.
#include <gtest/gtest.h>

#include <cmath>

#include "models/transformer.h"
#include "tests/support/expect_error.h"
#include "trainer/step_planner.h"

namespace chunkflow::trainer {
namespace {

configs::Config tiny_config(int64_t layers = 2) {
  configs::Config config;
  config.model.vocab_size = 64;
  config.model.hidden_size = 32;
  config.model.intermediate_size = 48;
  config.model.num_hidden_layers = layers;
  config.model.num_attention_heads = 4;
  config.model.num_key_value_heads = 2;
  config.data.path = "unused";
  return config;
}

// One step of one global batch.
StepLengths one_batch(std::vector<int64_t> lengths) { return {{std::move(lengths)}}; }

// Forward 1 ms per layer-token, backward 2 ms: easy to add up by hand.
StepCostModel token_costs() {
  StepCostModel costs;
  costs.forward.layer_token = 1e-3;
  costs.backward.layer_token = 2e-3;
  return costs;
}

TEST(StepPlannerTest, PredictedStepTimeOfAStandaloneChunkIsForwardPlusBackward) {
  const configs::Config config = tiny_config();
  // 100 + 50 tokens pack into one 256-token chunk: 2 layers x 150 tokens x (1 + 2) ms.
  const CandidatePrediction p = predict_candidate(config, one_batch({100, 50}), token_costs(), {256, 1});
  EXPECT_NEAR(p.step_seconds, 0.9, 1e-12);
  EXPECT_EQ(p.chunks, 1);
  EXPECT_NEAR(p.fill_ratio, 150.0 / 256.0, 1e-12);
  EXPECT_NEAR(p.tokens_per_second, 150 / 0.9, 1e-9);
  EXPECT_EQ(p.bubble_ratio, 0.0);
}

TEST(StepPlannerTest, RecomputedChunksOfASplitSequenceCostAnExtraForward) {
  const configs::Config config = tiny_config();
  StepCostModel costs = token_costs();
  costs.forward.head_op = 0.01;  // per forward on the last (only) stage, recomputes included
  costs.optimizer_fixed = 0.1;
  // 300 tokens at chunk 128: pieces 128, 128, 44; resident_chunks 1 recomputes the first two.
  // forwards 2 x 300 x 1 ms = 0.6, backwards 2 x 300 x 2 ms = 1.2, recomputes 2 x 256 x 1 ms =
  // 0.512, 5 forward ops x 0.01 = 0.05, optimizer 0.1.
  const CandidatePrediction one = predict_candidate(config, one_batch({300}), costs, {128, 1});
  EXPECT_NEAR(one.step_seconds, 0.6 + 1.2 + 0.512 + 0.05 + 0.1, 1e-12);
  EXPECT_NEAR(one.recompute_share, 2.0 / 3.0, 1e-12);
  // All three resident: no recompute.
  const CandidatePrediction three = predict_candidate(config, one_batch({300}), costs, {128, 3});
  EXPECT_NEAR(three.step_seconds, 0.6 + 1.2 + 0.03 + 0.1, 1e-12);
  EXPECT_EQ(three.recompute_share, 0.0);
}

TEST(StepPlannerTest, AttentionEntriesIncludeTheKVPrefix) {
  const configs::Config config = tiny_config(1);
  StepCostModel costs;
  costs.forward.layer_entry = 1e-6;
  // 8 tokens at chunk 4: piece 0 has 4 x 5 / 2 = 10 entries, piece 1 has 4 x 4 + 10 = 26.
  const CandidatePrediction p = predict_candidate(config, one_batch({8}), costs, {4, 2});
  EXPECT_NEAR(p.step_seconds, 36e-6, 1e-15);
}

TEST(StepPlannerTest, UniformChunksOnTwoStagesGiveTheTextbookBubble) {
  configs::Config config = tiny_config();
  config.parallel.pp = 2;  // one layer per stage, equal costs (no head term)
  const CandidatePrediction p = predict_candidate(config, one_batch({128, 128, 128, 128}), token_costs(), {128, 1});
  // 1F1B: (m + p - 1) x (F + B) per stage with F = 0.128 s, B = 0.256 s; bubble (p-1)/(m+p-1).
  EXPECT_NEAR(p.step_seconds, 5 * 0.384, 1e-9);
  EXPECT_NEAR(p.bubble_ratio, 0.2, 1e-9);
}

TEST(StepPlannerTest, DataParallelStepTakesTheSlowestRank) {
  configs::Config config = tiny_config();
  config.parallel.dp = 2;
  // Two standalone chunks of 128 and 64 tokens: one per rank, the step waits for the larger.
  const CandidatePrediction p = predict_candidate(config, one_batch({128, 64}), token_costs(), {128, 1});
  EXPECT_NEAR(p.step_seconds, 2 * 128 * 3e-3, 1e-12);
  EXPECT_NEAR(p.dp_imbalance, 128.0 / 96.0, 1e-12);
  // Global batches of one step add up per rank before the ranks meet.
  config.optim.grad_accumulation = 2;
  const StepLengths two_batches = {{{128, 64}, {128, 64}}};
  EXPECT_NEAR(predict_candidate(config, two_batches, token_costs(), {128, 1}).step_seconds, 4 * 128 * 3e-3, 1e-12);
}

StepCostModel memory_costs() {
  StepCostModel costs = token_costs();
  costs.activation_per_layer_token = 1000;
  costs.activation_per_head_token = 500;
  costs.activation_per_chunk = 1 << 20;
  costs.runtime_bytes = 100 << 20;
  return costs;
}

TEST(StepPlannerTest, KVStateAndModelStateFollowTheirFormulas) {
  const configs::Config config = tiny_config();
  // 1000 tokens at chunk 256: 4 pieces; the state holds 4 x 256 rows.
  const CandidatePrediction p = predict_candidate(config, one_batch({1000}), memory_costs(), {256, 1});
  const int64_t head_dim = 8;
  EXPECT_EQ(p.peak_memory.kv_state_bytes, 4 * 256 * 2 /*layers*/ * 2 * 2 /*kv heads*/ * head_dim * 4 * 2);
  EXPECT_EQ(p.peak_memory.model_state_bytes, 4 * stage_parameter_count(config.model, 0, 1) * 4);
  EXPECT_EQ(p.peak_memory.runtime_bytes, 100 << 20);
  // One chunk's activations at a time with resident_chunks 1.
  EXPECT_EQ(p.peak_memory.activation_bytes, 2 * 1000 * 256 + 500 * 256 + (1 << 20));
}

TEST(StepPlannerTest, PeakMemoryGrowsWithResidentChunksAndChunkSize) {
  const configs::Config config = tiny_config();
  const StepLengths lengths = one_batch({4096, 300, 20});
  int64_t previous = 0;
  for (const int64_t resident : {1, 2, 4, 8}) {
    const int64_t peak = predict_candidate(config, lengths, memory_costs(), {256, resident}).peak_memory.total_bytes();
    EXPECT_GT(peak, previous) << "resident_chunks " << resident;
    previous = peak;
  }
  previous = 0;
  for (const int64_t chunk_size : {128, 256, 512, 1024}) {
    const int64_t peak = predict_candidate(config, lengths, memory_costs(), {chunk_size, 1}).peak_memory.total_bytes();
    EXPECT_GT(peak, previous) << "chunk_size " << chunk_size;
    previous = peak;
  }
}

TEST(StepPlannerTest, StageParameterCountMatchesTheModel) {
  for (const bool tied : {false, true}) {
    for (const std::string family : {"llama", "qwen2"}) {
      configs::Config config = tiny_config(3);
      config.model.family = family;
      config.model.tie_word_embeddings = tied;
      config.model.attention_bias = true;
      for (int stages = 1; stages <= 3; ++stages) {
        for (int stage = 0; stage < stages; ++stage) {
          const models::CausalLM model(config.model, models::pipeline_stage(config.model, stage, stages));
          int64_t count = 0;
          for (const auto& parameter : model->parameters()) count += parameter.numel();
          EXPECT_EQ(stage_parameter_count(config.model, stage, stages), count)
              << family << " tied " << tied << " stage " << stage << " of " << stages;
        }
      }
    }
  }
}

CandidatePrediction made_up(int64_t chunk_size, double seconds, int64_t bytes) {
  CandidatePrediction p;
  p.candidate = {chunk_size, 1};
  p.step_seconds = seconds;
  p.peak_memory.activation_bytes = bytes;
  return p;
}

TEST(StepPlannerTest, RecommendationIsTheFastestWithinBudgetAndTiesGoToLessMemory) {
  std::vector<CandidatePrediction> predictions = {made_up(256, 2.0, 100), made_up(512, 1.0, 300),
                                                  made_up(1024, 1.005, 200), made_up(2048, 0.5, 900)};
  EXPECT_EQ(recommend(predictions, 0), 3);  // no budget: the fastest
  EXPECT_TRUE(predictions[3].within_budget);
  EXPECT_EQ(recommend(predictions, 500), 2);  // 2048 is over; 512 and 1024 tie within 1%: less memory
  EXPECT_FALSE(predictions[3].within_budget);
  EXPECT_EQ(recommend(predictions, 250), 2);
  EXPECT_EQ(recommend(predictions, 150), 0);
  EXPECT_EQ(recommend(predictions, 50), -1);
  for (const auto& p : predictions) EXPECT_FALSE(p.within_budget);
}

TEST(StepPlannerTest, ByteSizesTakeBinarySuffixes) {
  EXPECT_EQ(parse_byte_size("512", "--memory-budget"), 512);
  EXPECT_EQ(parse_byte_size("1.5K", "--memory-budget"), 1536);
  EXPECT_EQ(parse_byte_size("16G", "--memory-budget"), int64_t{16} << 30);
  EXPECT_EQ(parse_byte_size("300MiB", "--memory-budget"), int64_t{300} << 20);
  EXPECT_EQ(parse_byte_size("2gb", "--memory-budget"), int64_t{2} << 30);
  for (const std::string bad : {"", "G", "lots", "-1G", "0"}) {
    testing::expect_error_mentions([&] { parse_byte_size(bad, "--memory-budget"); }, {"--memory-budget"});
  }
}

TEST(StepPlannerTest, DefaultChunkSizesArePowersOfTwoUpToTheLongestSequence) {
  EXPECT_EQ(default_chunk_sizes(4000), (std::vector<int64_t>{128, 256, 512, 1024, 2048, 4096}));
  EXPECT_EQ(default_chunk_sizes(100), (std::vector<int64_t>{128}));
  EXPECT_EQ(default_chunk_sizes(262144).size(), 8u);
  EXPECT_EQ(default_chunk_sizes(262144).back(), 262144);
}

TEST(StepPlannerTest, CalibrationRoundTripsThroughJsonAndRejectsOtherFiles) {
  StepCostModel costs = memory_costs();
  costs.forward.layer_entry = 3.5e-9;
  costs.backward.head_op = 1.25e-4;
  costs.optimizer_per_parameter = 2e-9;
  costs.model_shape = model_shape_key(tiny_config().model);
  costs.threads = 2;
  costs.chunk_sizes = {128, 512};
  const StepCostModel back = StepCostModel::from_json(costs.to_json(), "c.json");
  EXPECT_EQ(back.to_json(), costs.to_json());
  EXPECT_EQ(back.forward.layer_entry, 3.5e-9);
  EXPECT_EQ(back.backward.head_op, 1.25e-4);
  testing::expect_error_mentions([] { StepCostModel::from_json("{ nope", "c.json"); }, {"c.json", "calibration"});
  testing::expect_error_mentions([] { StepCostModel::from_json("{\"model_shape\": \"x\"}", "c.json"); },
                                 {"c.json", "missing number \"threads\""});
}

TEST(StepPlannerTest, CalibrationOfATinyModelFitsItsOwnTimings) {
  CalibrationOptions options;
  options.chunk_sizes = {32, 128};
  options.seconds = 0.5;
  options.progress = false;
  const StepCostModel costs = calibrate_time(tiny_config().model, options);
  EXPECT_GE(costs.observations, 16);
  // Non-negative by construction; some time must be attributed to tokens or ops.
  for (const OpCost& op : {costs.forward, costs.backward}) {
    EXPECT_GE(op.layer_token, 0);
    EXPECT_GE(op.layer_entry, 0);
    EXPECT_GE(op.head_op, 0);
    EXPECT_GT(op.seconds(2, true, 128, 128 * 129 / 2), 0);
  }
  EXPECT_GT(costs.optimizer_per_parameter, 0);
  EXPECT_LT(costs.fit_relative_rms, 1.0);
  EXPECT_EQ(costs.model_shape, model_shape_key(tiny_config().model));
}

}  // namespace
}  // namespace chunkflow::trainer
