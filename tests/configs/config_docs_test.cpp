// The shipped config files and docs stay in step with the code: configs/demo.yaml loads, and
// configs/README.md documents every key the loader accepts.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "configs/config_loader.h"
#include "core/file_io.h"
#include "tests/support/temp_dir.h"

namespace chunkflow::configs {
namespace {

std::string repo_file(const std::string& relative) { return testing::source_file(relative); }

TEST(ConfigDocsTest, ReadmeDocumentsEveryKey) {
  const std::string readme = core::read_file(repo_file("configs/README.md"));
  for (const auto& key : all_keys()) {
    EXPECT_NE(readme.find("`" + key + "`"), std::string::npos)
        << "configs/README.md does not document `" << key << "`";
  }
}

// The number after `flag` in `text` (e.g. "--vocab-size 512"), or -1 when `flag` is absent.
int64_t number_after(const std::string& text, const std::string& flag) {
  const size_t at = text.find(flag);
  return at == std::string::npos ? -1 : std::stoll(text.substr(at + flag.size()));
}

TEST(ConfigDocsTest, DemoConfigFitsTheDatasetTheDemoScriptWrites) {
  // scripts/demo_run.sh writes the dataset with `chunkflow-data synth --vocab-size N` under
  // <run folder>/data/longtail and states the chunk size it reports; the demo config must match.
  const Config config = load_config(repo_file("configs/demo.yaml"));
  const std::string script = core::read_file(repo_file("scripts/demo_run.sh"));
  EXPECT_EQ(config.model.vocab_size, number_after(script, "--vocab-size "));
  EXPECT_EQ(config.chunking.chunk_size, number_after(script, "chunk_size="));
  // Copies lie --copy-period tokens back: more than a chunk, so every one crosses a chunk boundary.
  EXPECT_GT(number_after(script, "--copy-period "), config.chunking.chunk_size);
  EXPECT_NE(script.find("data=\"$out/data/longtail\""), std::string::npos);
  EXPECT_EQ(config.data.path, "runs/demo/data/longtail");
  EXPECT_EQ(config.run.name, "demo");
  // Small enough for the 2-core machines: a few layers, split sequences recomputed with K = 1.
  EXPECT_LE(config.model.num_hidden_layers, 4);
  EXPECT_EQ(config.chunking.resident_chunks, 1);
}

TEST(ConfigDocsTest, BenchmarkConfigFitsTheBenchmarkDataset) {
  // bench_longtail_dataset (scripts/env.sh) writes the data configs/small_llama.yaml trains on.
  const Config config = load_config(repo_file("configs/small_llama.yaml"));
  const std::string env = core::read_file(repo_file("scripts/env.sh"));
  const size_t at = env.find("bench_longtail_dataset() {");
  ASSERT_NE(at, std::string::npos) << "scripts/env.sh no longer defines bench_longtail_dataset";
  const std::string function = env.substr(at);
  EXPECT_EQ(config.model.vocab_size, number_after(function, "--vocab-size "));
  EXPECT_EQ(config.data.path, "runs/bench/data/longtail");
  EXPECT_NE(function.find("runs/bench/data/longtail"), std::string::npos);
}

TEST(ConfigDocsTest, GpuConfigIsTheQwen2HalfBillionShape) {
  // bench/gpu_training.sh and README's GPU quick start use it: it must load and validate, and
  // keep the published Qwen2-0.5B shape (494M parameters).
  const Config config = load_config(repo_file("configs/qwen2_0.5b_gpu.yaml"));
  EXPECT_EQ(config.run.device, "cuda");
  EXPECT_EQ(config.model.dtype, "bfloat16");
  EXPECT_EQ(config.model.family, "qwen2");
  EXPECT_EQ(config.model.effective_head_dim(), 64);
  const int64_t hidden = config.model.hidden_size, layers = config.model.num_hidden_layers;
  const int64_t kv_width = config.model.num_key_value_heads * config.model.effective_head_dim();
  const int64_t per_layer = hidden * hidden * 2 + hidden * kv_width * 2 + hidden + 2 * kv_width +
                            3 * hidden * config.model.intermediate_size + 2 * hidden;
  const int64_t parameters = config.model.vocab_size * hidden + layers * per_layer + hidden;
  EXPECT_NEAR(static_cast<double>(parameters), 494.0e6, 1.0e6);
}

TEST(ConfigDocsTest, DemoConfigTakesOverridesLikeTheTrainerWould) {
  const Config config = load_config(repo_file("configs/demo.yaml"),
                                    {"chunking.chunk_size=256", "chunking.resident_chunks=2"});
  EXPECT_EQ(config.chunking.chunk_size, 256);
  EXPECT_EQ(config.chunking.resident_chunks, 2);
}

}  // namespace
}  // namespace chunkflow::configs
