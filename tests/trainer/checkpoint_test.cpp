// Checkpoints on a single rank: exact resume (every later loss and the final weights equal the
// uninterrupted run's; skipped-step counters continue), keep_last pruning, unfinished directories never picked, and refusals with
// clear messages for corrupt or truncated shards, a different model, other data settings and a
// changed dataset, while the previous checkpoint stays usable. (Multi-rank SIGKILL + resume and
// re-sharding across layouts: tests/tools/chunkflow_train_resume_test.sh.)
#include "trainer/checkpoint.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/file_io.h"
#include "data/synthetic.h"
#include "tests/support/expect_error.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tiny_run.h"
#include "trainer/trainer.h"

namespace chunkflow::trainer {
namespace {

using chunkflow::testing::contains;
using chunkflow::testing::error_message;

configs::Config resumable_run(const testing::TempDir& dir, int64_t steps) {
  configs::Config config = testing::tiny_run(dir);
  config.run.steps = steps;
  config.optim.schedule = "constant";  // the learning rate does not depend on run.steps
  config.optim.warmup_steps = 0;
  config.checkpoint.interval = 3;
  config.checkpoint.keep_last = 2;
  return config;
}

std::vector<double> losses(const std::vector<StepMetrics>& history) {
  std::vector<double> values;
  for (const auto& metrics : history) values.push_back(metrics.loss);
  return values;
}

void flip_byte(const std::string& path, size_t offset) {
  std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
  file.seekg(static_cast<std::streamoff>(offset));
  char byte = 0;
  file.read(&byte, 1);
  byte = static_cast<char>(byte ^ 0x5a);
  file.seekp(static_cast<std::streamoff>(offset));
  file.write(&byte, 1);
}

TEST(CheckpointTest, ResumeReproducesEveryLaterLossAndTheFinalWeights) {
  testing::TempDir reference_dir;
  configs::Config reference_config = resumable_run(reference_dir, 8);
  Trainer reference(reference_config);
  const std::vector<double> expected = losses(reference.train());

  testing::TempDir dir;
  configs::Config config = resumable_run(dir, 5);  // "interrupted" after step 5; last checkpoint: step 3
  {
    Trainer first(config);
    first.train();
  }
  // Steps 4 and 5 ran after the checkpoint of step 3; step 5's end-of-run checkpoint is removed to
  // resume from 3, as a run killed during step 4 or 5 would.
  const std::string checkpoints = config.checkpoint_dir();
  std::filesystem::remove_all(checkpoints + "/" + checkpoint_name(5));
  config.run.steps = 8;
  config.checkpoint.resume = "auto";
  Trainer resumed(config);
  EXPECT_EQ(resumed.resumed_from(), checkpoints + "/" + checkpoint_name(3));
  EXPECT_EQ(resumed.steps_done(), 3);
  const std::vector<double> after = losses(resumed.train());
  ASSERT_EQ(after.size(), 5u);
  for (size_t index = 0; index < after.size(); ++index) {
    EXPECT_NEAR(after[index], expected[index + 3], 1e-6 * std::abs(expected[index + 3])) << "step " << index + 4;
  }
  const auto reference_weights = reference.model()->named_parameters();
  for (const auto& parameter : resumed.model()->named_parameters()) {
    EXPECT_TRUE(torch::allclose(parameter.value(), reference_weights[parameter.key()], 1e-6, 1e-7)) << parameter.key();
  }
  // metrics.jsonl lists every step once, 1..8.
  const std::string metrics = core::read_file(config.run.run_dir() + "/metrics.jsonl");
  for (int step = 1; step <= 8; ++step) {
    const std::string key = "{\"step\":" + std::to_string(step) + ",";
    EXPECT_EQ(metrics.find(key), metrics.rfind(key)) << "step " << step << " twice";
    EXPECT_NE(metrics.find(key), std::string::npos) << "step " << step << " missing";
  }
}

TEST(CheckpointTest, SkippedStepCountersContinueAcrossAResume) {
  testing::TempDir dir;
  configs::Config config = resumable_run(dir, 8);
  config.optim.max_skipped_steps = 2;
  torch::Tensor good_norm;
  const auto poison = [](Trainer& trainer) {
    torch::NoGradGuard no_grad;
    trainer.model()->named_parameters()["model.norm.weight"].fill_(NAN);  // loss and gradients NaN
  };
  {
    Trainer first(config);
    EXPECT_FALSE(first.train_step().skipped);
    good_norm = first.model()->named_parameters()["model.norm.weight"].detach().clone();
    poison(first);
    EXPECT_EQ(first.train_step().skipped_steps, 1);
    {
      torch::NoGradGuard no_grad;
      first.model()->named_parameters()["model.norm.weight"].copy_(good_norm);
    }
    EXPECT_FALSE(first.train_step().skipped);
    poison(first);
    const StepMetrics skipped = first.train_step();  // step 4: 2 skipped, 1 in a row
    EXPECT_EQ(skipped.skipped_steps, 2);
    first.save_checkpoint_now();
  }
  const std::string saved = config.checkpoint_dir() + "/" + checkpoint_name(4);
  const checkpoint::Manifest manifest = read_manifest(saved);
  EXPECT_EQ(manifest.counters().skipped_steps(), 2);
  EXPECT_EQ(manifest.counters().consecutive_skipped_steps(), 1);

  // The checkpoint holds the NaN norm, as the interrupted run did: the streak goes on after the
  // resume, so the run stops at the third skip in a row (steps 4, 5, 6), as without the restart.
  config.checkpoint.resume = saved;
  Trainer resumed(config);
  const StepMetrics fifth = resumed.train_step();
  EXPECT_TRUE(fifth.skipped);
  EXPECT_EQ(fifth.skipped_steps, 3) << "the run's count continues from the checkpoint's 2";
  EXPECT_TRUE(contains(error_message([&] { resumed.train_step(); }), "3 step(s) in a row"));

  // Counters that cannot be (more in a row than in all) are a corrupt manifest, even with a
  // valid checksum.
  checkpoint::Manifest broken = manifest;
  broken.mutable_counters()->set_consecutive_skipped_steps(3);
  std::string payload;
  ASSERT_TRUE(broken.SerializeToString(&payload));
  core::write_file_atomic(saved + "/manifest.pb", frame_manifest(payload));
  EXPECT_TRUE(contains(error_message([&] { read_manifest(saved); }),
                       "skipped-step counters (2 skipped, 3 in a row, at step 4) must satisfy"));
}

TEST(CheckpointTest, KeepsTheLastNAndIgnoresUnfinishedDirectories) {
  testing::TempDir dir;
  configs::Config config = resumable_run(dir, 10);
  Trainer trainer(config);
  trainer.train();
  const std::string root = config.checkpoint_dir();
  // Saved at 3, 6, 9 and 10; keep_last 2.
  const std::vector<std::string> saved = list_checkpoints(root);
  ASSERT_EQ(saved.size(), 2u);
  EXPECT_EQ(saved[0], root + "/" + checkpoint_name(9));
  EXPECT_EQ(saved[1], root + "/" + checkpoint_name(10));
  EXPECT_FALSE(core::path_exists(root + "/" + checkpoint_name(6)));
  // A crash before the commit leaves a partial directory or a step folder without manifest:
  // neither is ever picked.
  core::make_directories(root + "/.step-00000011.partial");
  core::make_directories(root + "/" + checkpoint_name(12));
  // A step number past int64 (found by reading after fuzzing) is not ours and must not overflow.
  core::make_directories(root + "/step-99999999999999999999");
  core::write_file_atomic(root + "/step-99999999999999999999/manifest.pb", "x");
  EXPECT_EQ(list_checkpoints(root).back(), root + "/" + checkpoint_name(10));
  config.checkpoint.resume = "auto";
  EXPECT_EQ(resolve_resume(config), root + "/" + checkpoint_name(10));
  config.checkpoint.resume = root + "/" + checkpoint_name(12);
  EXPECT_TRUE(contains(error_message([&] { resolve_resume(config); }), "not a checkpoint directory (no manifest.pb)"));
}

TEST(CheckpointTest, CorruptOrTruncatedShardsAreRefusedAndThePreviousOneStillWorks) {
  testing::TempDir dir;
  configs::Config config = resumable_run(dir, 6);
  {
    Trainer trainer(config);
    trainer.train();
  }
  const std::string root = config.checkpoint_dir();
  const std::string latest = root + "/" + checkpoint_name(6);
  const std::string shard = latest + "/stage-00.safetensors";
  const uint64_t size = core::MappedFile(shard).size();
  flip_byte(shard, size / 2);
  config.checkpoint.resume = "auto";
  EXPECT_TRUE(contains(error_message([&] { Trainer trainer(config); }), "fails its checksum"));

  std::filesystem::resize_file(shard, size - 100);
  EXPECT_TRUE(contains(error_message([&] { Trainer trainer(config); }), "bytes, the manifest says"));

  std::filesystem::remove(shard);
  EXPECT_TRUE(contains(error_message([&] { Trainer trainer(config); }), "stage-00.safetensors is missing"));

  const std::string manifest = latest + "/manifest.pb";
  flip_byte(manifest, core::MappedFile(manifest).size() - 5);
  EXPECT_TRUE(contains(error_message([&] { read_manifest(latest); }), "the manifest is corrupt"));
  flip_byte(manifest, 2);
  EXPECT_TRUE(contains(error_message([&] { read_manifest(latest); }), "bad magic"));

  config.checkpoint.resume = root + "/" + checkpoint_name(3);
  Trainer previous(config);
  EXPECT_EQ(previous.steps_done(), 3);
}

TEST(CheckpointTest, IncompatibleModelDataOrDatasetIsRefusedSayingWhatDiffers) {
  testing::TempDir dir;
  configs::Config config = resumable_run(dir, 3);
  {
    Trainer trainer(config);
    trainer.train();
  }
  config.checkpoint.resume = "auto";

  configs::Config wider = config;
  wider.model.intermediate_size += 8;
  EXPECT_TRUE(contains(error_message([&] { Trainer trainer(wider); }),
                       "model.intermediate_size: checkpoint " + std::to_string(config.model.intermediate_size) + ", run " +
                           std::to_string(wider.model.intermediate_size)));

  configs::Config reseeded = config;
  reseeded.run.seed += 1;
  EXPECT_TRUE(contains(error_message([&] { Trainer trainer(reseeded); }), "run.seed: checkpoint"));

  // The dataset rewritten with other content under the same name (tiny_run's shape, other seed).
  data::SynthOptions synth;
  synth.sequences = 300;
  synth.vocab_size = 64;
  synth.scale = 0.05;
  synth.max_length = 300;
  synth.tail_fraction = 0.05;
  synth.seed = 99;
  data::write_synthetic_dataset(config.data.path, synth, false);
  const std::string error = error_message([&] { Trainer trainer(config); });
  EXPECT_TRUE(contains(error, "the dataset changed under the run")) << error;
}

TEST(CheckpointTest, AnUnwritableCheckpointDirectoryIsAnErrorAndLeavesNothingBehind) {
  testing::TempDir dir;
  configs::Config config = resumable_run(dir, 3);
  const std::string blocker = dir.file("not_a_directory");
  core::write_file_atomic(blocker, "x");
  config.checkpoint.dir = blocker + "/checkpoints";
  const std::string error = error_message([&] {
    Trainer trainer(config);
    trainer.train();
  });
  EXPECT_TRUE(contains(error, blocker)) << error;
}

}  // namespace
}  // namespace chunkflow::trainer
