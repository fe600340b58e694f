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

TEST(ConfigDocsTest, DemoConfigLoadsAsTheSmallDemoModel) {
  const Config config = load_config(repo_file("configs/demo.yaml"));
  EXPECT_EQ(config.run.name, "demo");
  EXPECT_EQ(config.run.steps, 60);
  EXPECT_EQ(config.model.family, "llama");
  EXPECT_EQ(config.model.vocab_size, 512);
  EXPECT_EQ(config.model.hidden_size, 128);
  EXPECT_EQ(config.model.intermediate_size, 352);
  EXPECT_EQ(config.model.num_hidden_layers, 2);
  EXPECT_EQ(config.model.num_attention_heads, 4);
  EXPECT_EQ(config.model.num_key_value_heads, 2);
  EXPECT_EQ(config.data.path, "runs/demo/data/longtail");
  EXPECT_EQ(config.data.batch_tokens, 16384);
  EXPECT_EQ(config.chunking.chunk_size, 512);
  EXPECT_EQ(config.chunking.resident_chunks, 1);
  EXPECT_EQ(config.optim.lr, 1e-3);
}

TEST(ConfigDocsTest, DemoConfigTakesOverridesLikeTheTrainerWould) {
  const Config config = load_config(repo_file("configs/demo.yaml"),
                                    {"chunking.chunk_size=256", "chunking.resident_chunks=2"});
  EXPECT_EQ(config.chunking.chunk_size, 256);
  EXPECT_EQ(config.chunking.resident_chunks, 2);
}

}  // namespace
}  // namespace chunkflow::configs
