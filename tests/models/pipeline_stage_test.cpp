// Pipeline stages of the model: contiguous layer ranges, Hugging Face names with global layer
// indices, and exactly the whole model's initial values on every stage.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "models/transformer.h"
#include "tests/support/expect_error.h"

namespace chunkflow::models {
namespace {

configs::ModelConfig five_layers(bool tied) {
  configs::ModelConfig config;
  config.vocab_size = 50;
  config.hidden_size = 16;
  config.intermediate_size = 24;
  config.num_hidden_layers = 5;
  config.num_attention_heads = 4;
  config.num_key_value_heads = 2;
  config.tie_word_embeddings = tied;
  config.validate();
  return config;
}

TEST(PipelineStageTest, LayersSplitContiguouslyWithTheRemainderOnEarlierStages) {
  const configs::ModelConfig config = five_layers(false);
  const std::vector<std::pair<int64_t, int64_t>> expected = {{0, 2}, {2, 4}, {4, 5}};
  for (int stage = 0; stage < 3; ++stage) {
    const ModelStage part = pipeline_stage(config, stage, 3);
    EXPECT_EQ(part.first_layer, expected[static_cast<size_t>(stage)].first);
    EXPECT_EQ(part.end_layer, expected[static_cast<size_t>(stage)].second);
    EXPECT_EQ(part.input_embedding, stage == 0);
    EXPECT_EQ(part.output_head, stage == 2);
  }
  chunkflow::testing::expect_error_mentions([&] { pipeline_stage(config, 0, 6); },
                                            {"parallel.pp = 6", "model.num_hidden_layers = 5"});
}

TEST(PipelineStageTest, EveryStageHoldsTheWholeModelsValuesUnderOneSeed) {
  for (const bool tied : {false, true}) {
    const configs::ModelConfig config = five_layers(tied);
    torch::manual_seed(11);
    const CausalLM whole(config);
    const auto whole_parameters = whole->named_parameters();
    std::set<std::string> covered;
    for (int stage = 0; stage < 3; ++stage) {
      // Each stage builds different modules (drawing torch's generator a different number of
      // times), yet gets the same values: the seed is drawn first, each tensor seeded by name.
      torch::manual_seed(11);
      const CausalLM part(config, pipeline_stage(config, stage, 3));
      for (const auto& item : part->named_parameters()) {
        ASSERT_TRUE(whole_parameters.contains(item.key())) << item.key();
        EXPECT_TRUE(torch::equal(item.value(), whole_parameters[item.key()])) << item.key() << " on stage " << stage;
        covered.insert(item.key());
      }
      EXPECT_EQ(part->stage_layers(), stage < 2 ? 2 : 1);
    }
    EXPECT_EQ(covered.size(), whole_parameters.size()) << "a parameter is on no stage";
    // The tied embedding lives on the first stage and, as the LM head, on the last one.
    torch::manual_seed(11);
    const CausalLM last(config, pipeline_stage(config, 2, 3));
    EXPECT_EQ(last->named_parameters().contains("model.embed_tokens.weight"), tied);
    EXPECT_EQ(last->named_parameters().contains("lm_head.weight"), !tied);
  }
}

}  // namespace
}  // namespace chunkflow::models
