// The training loop end to end on a small synthetic dataset: 20 optimizer steps of ChunkFlow
// (split + packed chunks, resident_chunks 1) against a reference trainer that runs every
// sequence whole with dense attention, plus the run directory's outputs and the schedule.
#include "trainer/trainer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "configs/config_loader.h"
#include "core/error.h"
#include "core/file_io.h"
#include "data/indexed_dataset.h"
#include "tests/support/expect_error.h"
#include "tests/support/reference_model.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tiny_run.h"
#include "trainer/flops.h"
#include "trainer/lr_schedule.h"
#include "trainer/tensorboard_writer.h"

namespace chunkflow::trainer {
namespace {


// Runs `config` with ChunkFlow and with the reference trainer; returns the worst per-step loss gap.
void expect_same_loss_curve(const configs::Config& config) {
  Trainer trainer(config);
  const std::vector<StepMetrics> history = trainer.train();
  ASSERT_EQ(history.size(), 20u);

  // Reference: same initial weights (same seed, same construction), same batches, same AdamW,
  // clipping and schedule; the loss comes from whole sequences with dense attention.
  torch::manual_seed(static_cast<uint64_t>(config.run.seed));
  models::CausalLM reference_model(config.model);
  auto optimizer = make_optimizer(reference_model, config.optim);
  const data::IndexedDataset dataset(config.data.path);
  data::GlobalBatchSampler sampler(dataset.lengths(), config.data, static_cast<uint64_t>(config.run.seed));
  double worst = 0;
  int64_t split_steps = 0;
  for (int64_t step = 0; step < config.run.steps; ++step) {
    const double lr = learning_rate(config.optim, step, config.run.steps);
    for (auto& group : optimizer->param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    // Gradient accumulation: the step's batches together, one mean over all their loss tokens.
    std::vector<testing::ReferenceSequence> sequences;
    for (int64_t micro = 0; micro < config.optim.grad_accumulation; ++micro) {
      for (const int64_t index : sampler.next().sequences) {
        const std::vector<int32_t> tokens = dataset.read(index);
        sequences.push_back({std::vector<int64_t>(tokens.begin(), tokens.end()), {}});
      }
    }
    optimizer->zero_grad();
    const torch::Tensor loss = testing::reference_mean_loss(reference_model->named_parameters(), config.model, sequences);
    loss.backward();
    clip_gradients(reference_model, config.optim.max_grad_norm);
    optimizer->step();
    const StepMetrics& metrics = history[static_cast<size_t>(step)];
    worst = std::max(worst, std::abs(metrics.loss - loss.item<double>()));
    ASSERT_NEAR(metrics.loss, loss.item<double>(), 1e-4) << "step " << step + 1;
    EXPECT_DOUBLE_EQ(metrics.learning_rate, lr);
    split_steps += metrics.recomputed_chunks > 0;
  }
  std::printf("20-step loss curves (grad_accumulation %lld): worst |chunkflow - reference| = %.3g (loss %.4f -> %.4f)\n",
              static_cast<long long>(config.optim.grad_accumulation), worst, history.front().loss, history.back().loss);
  EXPECT_GT(split_steps, 5) << "too few steps exercised recomputation of split sequences";
  EXPECT_LT(history.back().loss, history.front().loss) << "20 steps did not reduce the loss";
}

TEST(TrainerTest, TwentyStepsMatchAReferenceTrainerOnWholeSequences) {
  testing::TempDir dir;
  expect_same_loss_curve(testing::tiny_run(dir));
}

TEST(TrainerTest, GradientAccumulationMatchesOneLargeBatchOfTheReference) {
  testing::TempDir dir;
  configs::Config config = testing::tiny_run(dir);
  config.optim.grad_accumulation = 2;
  config.chunking.resident_chunks = 2;
  config.chunking.chunk_size = 17;
  expect_same_loss_curve(config);
}

TEST(TrainerTest, WritesResolvedConfigMetricsAndTensorBoardEvents) {
  testing::TempDir dir;
  configs::Config config = testing::tiny_run(dir);
  config.run.steps = 3;
  Trainer trainer(config);
  trainer.train();
  const std::string run_dir = config.run.run_dir();
  EXPECT_EQ(configs::load_config(run_dir + "/config.yaml"), config);
  std::ifstream metrics(run_dir + "/metrics.jsonl");
  int lines = 0;
  for (std::string line; std::getline(metrics, line);) {
    ++lines;
    EXPECT_NE(line.find("\"step\":" + std::to_string(lines) + ","), std::string::npos) << line;
    EXPECT_NE(line.find("\"far_loss\""), std::string::npos);
  }
  EXPECT_EQ(lines, 3);
  std::vector<std::string> event_files;
  for (const auto& entry : std::filesystem::directory_iterator(run_dir + "/tensorboard")) {
    event_files.push_back(entry.path().string());
  }
  ASSERT_EQ(event_files.size(), 1u);
  const auto events = read_tensorboard_events(event_files[0]);
  ASSERT_EQ(events.size(), 4u);  // file version + one per step
  bool saw_loss = false;
  for (const auto& [tag, value] : events[1].scalars) saw_loss |= tag == "loss/train" && std::isfinite(value);
  EXPECT_TRUE(saw_loss);
}

TEST(TrainerTest, AFreshStartIntoAnEarlierRunsFolderIsRefusedUnlessOverwriteDeletesItsOutputs) {
  testing::TempDir dir;
  configs::Config config = testing::tiny_run(dir);
  config.run.steps = 2;
  Trainer(config).train();
  const std::string run_dir = config.run.run_dir();
  core::write_file_atomic(run_dir + "/notes.txt", "the user's own file");
  const std::string checkpoint = config.checkpoint_dir() + "/step-00000002";
  ASSERT_TRUE(core::path_exists(checkpoint));

  const std::string refused = testing::error_message([&] { Trainer(config).train(); });
  for (const std::string& part : std::vector<std::string>{"run folder " + run_dir + " already holds a run (" + run_dir +
                                                              "/metrics.jsonl",
                                                          checkpoint, "set checkpoint.resume=auto to continue it",
                                                          "run.overwrite=true"}) {
    EXPECT_NE(refused.find(part), std::string::npos) << part << "\n" << refused;
  }
  EXPECT_TRUE(core::path_exists(checkpoint)) << "a refused start touches nothing";

  config.run.overwrite = true;
  config.run.steps = 1;
  config.checkpoint.interval = -1;
  Trainer(config).train();
  EXPECT_FALSE(core::path_exists(checkpoint)) << "the earlier run's checkpoint is gone";
  EXPECT_TRUE(core::path_exists(run_dir + "/notes.txt")) << "files that are not run outputs stay";
  std::ifstream metrics(run_dir + "/metrics.jsonl");
  int lines = 0;
  for (std::string line; std::getline(metrics, line);) ++lines;
  EXPECT_EQ(lines, 1) << "only the new run's step";
}

TEST(TrainerTest, TheLossMaskBesideTheDatasetIsUsedWithoutASecondKey) {
  testing::TempDir dir;
  configs::Config config = testing::tiny_run(dir);
  config.run.steps = 2;
  config.checkpoint.interval = -1;
  // A mask beside the dataset, as chunkflow-data prepare writes it: loss on the second half only.
  {
    const data::IndexedDataset tokens(config.data.path);
    data::IndexedDatasetWriter mask(config.data.path + "_loss_mask", data::TokenDType::kUInt8);
    for (int64_t sequence = 0; sequence < tokens.size(); ++sequence) {
      const int64_t length = tokens.length(sequence);
      std::vector<int32_t> flags(static_cast<size_t>(length), 0);
      for (int64_t position = length / 2; position < length; ++position) flags[static_cast<size_t>(position)] = 1;
      mask.add_sequence(flags);
      mask.end_document();
    }
    mask.finish();
  }
  const auto run = [&](const std::string& name, const std::string& mask_setting) {
    configs::Config variant = config;
    variant.run.name = name;
    variant.data.loss_mask_path = mask_setting;
    return Trainer(variant).train();
  };
  const std::vector<StepMetrics> found = run("found", "");
  const std::vector<StepMetrics> named = run("named", config.data.path + "_loss_mask");
  const std::vector<StepMetrics> unmasked = run("unmasked", "none");
  for (size_t step = 0; step < found.size(); ++step) {
    EXPECT_EQ(found[step].loss_tokens, named[step].loss_tokens) << step;
    EXPECT_EQ(found[step].loss, named[step].loss) << step;
    EXPECT_LT(found[step].loss_tokens, unmasked[step].loss_tokens) << "the mask must remove prompt tokens, step " << step;
  }
}

TEST(TrainerTest, RejectsSettingsThisBuildCannotRunNamingTheKey) {
  testing::TempDir dir;
  configs::Config config = testing::tiny_run(dir);
  config.model.init_from = "/nonexistent/hf";
  try {
    Trainer trainer(config);
    FAIL();
  } catch (const core::Error& error) {
    EXPECT_NE(std::string(error.what()).find("model.init_from"), std::string::npos);
  }
  config = testing::tiny_run(dir);
  config.data.path = dir.file("data/missing");
  EXPECT_THROW(Trainer{config}, core::Error);
}

TEST(TrainerTest, NonFiniteStepsAreSkippedCountedAndStopTheRunAfterTheLimit) {
  testing::TempDir dir;
  configs::Config config = testing::tiny_run(dir);
  config.optim.max_skipped_steps = 2;
  Trainer trainer(config);
  EXPECT_FALSE(trainer.train_step().skipped);

  auto parameters = trainer.model()->named_parameters();
  torch::Tensor norm = parameters["model.norm.weight"];
  const torch::Tensor good_norm = norm.detach().clone();
  const torch::Tensor head_before = parameters["lm_head.weight"].detach().clone();
  const auto poison = [&] {
    torch::NoGradGuard no_grad;
    norm.fill_(NAN);  // every logit, the loss and every gradient become NaN
  };
  poison();
  const StepMetrics skipped = trainer.train_step();
  EXPECT_TRUE(skipped.skipped);
  EXPECT_EQ(skipped.skipped_steps, 1);
  EXPECT_TRUE(torch::equal(parameters["lm_head.weight"], head_before)) << "a skipped step must not update";
  EXPECT_NE(skipped.to_json().find("\"skipped\":true"), std::string::npos);

  {
    torch::NoGradGuard no_grad;
    norm.copy_(good_norm);
  }
  const StepMetrics recovered = trainer.train_step();
  EXPECT_FALSE(recovered.skipped);
  EXPECT_TRUE(std::isfinite(recovered.loss));
  EXPECT_EQ(recovered.skipped_steps, 1);

  poison();
  EXPECT_TRUE(trainer.train_step().skipped);
  EXPECT_TRUE(trainer.train_step().skipped);
  try {
    trainer.train_step();
    FAIL() << "a third non-finite step in a row must stop the run";
  } catch (const core::Error& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("3 step(s) in a row"), std::string::npos) << message;
    EXPECT_NE(message.find("optim.max_skipped_steps = 2"), std::string::npos) << message;
    EXPECT_NE(message.find("parameters with non-finite gradients: model."), std::string::npos) << message;
    EXPECT_NE(message.find("dataset sequences"), std::string::npos) << message;
  }
}

TEST(LearningRateTest, WarmsUpLinearlyThenDecaysToMinimum) {
  configs::OptimConfig optim;
  optim.lr = 1.0;
  optim.min_lr = 0.1;
  optim.warmup_steps = 4;
  EXPECT_DOUBLE_EQ(learning_rate(optim, 0, 100), 0.2);
  EXPECT_DOUBLE_EQ(learning_rate(optim, 3, 100), 0.8);
  EXPECT_DOUBLE_EQ(learning_rate(optim, 4, 100), 1.0);
  EXPECT_NEAR(learning_rate(optim, 99, 100), 0.1, 1e-12);
  EXPECT_NEAR(learning_rate(optim, 4 + 95 / 2, 100), 0.55, 0.02);
  optim.schedule = "linear";
  EXPECT_NEAR(learning_rate(optim, 99, 100), 0.1, 1e-12);
  optim.schedule = "constant";
  EXPECT_DOUBLE_EQ(learning_rate(optim, 50, 100), 1.0);
}

TEST(FlopsTest, CountsLinearLayersOnTokensAndAttentionAsHalfSquare) {
  configs::ModelConfig model;
  model.vocab_size = 10;
  model.hidden_size = 4;
  model.intermediate_size = 8;
  model.num_hidden_layers = 1;
  model.num_attention_heads = 2;
  model.num_key_value_heads = 1;
  // q 4x4, k 4x2, v 4x2, o 4x4 = 48; mlp 3 x 4 x 8 = 96; head 40 -> 2 x 184 per token.
  EXPECT_DOUBLE_EQ(linear_flops_per_token(model), 368.0);
  // One sequence of 10 tokens: 3 x (368 x 10 + 1 layer x 4 x width 4 x 100 / 2).
  EXPECT_DOUBLE_EQ(training_flops(model, {10}), 3.0 * (3680.0 + 800.0));
}

TEST(WeightDecayTest, AppliesToMatricesOnly) {
  EXPECT_TRUE(takes_weight_decay("model.layers.0.mlp.up_proj.weight", torch::zeros({2, 2})));
  EXPECT_FALSE(takes_weight_decay("model.norm.weight", torch::zeros({2})));
  EXPECT_FALSE(takes_weight_decay("model.layers.0.self_attn.q_proj.bias", torch::zeros({2})));
}

}  // namespace
}  // namespace chunkflow::trainer
