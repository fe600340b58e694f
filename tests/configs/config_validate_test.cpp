// The rules of every section's validate() and of Config::validate(): each broken rule throws a
// ConfigError whose key() is the dotted YAML key and whose message quotes the rule and the value.
#include "configs/config.h"

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "tests/configs/config_test_util.h"

namespace chunkflow::configs {
namespace {

using testing::config_error_of;
using testing::expect_contains;

Config valid_config() {
  Config config;
  config.data.path = "data/train";
  return config;
}

TEST(ConfigValidateTest, DefaultsAreValidExceptTheRequiredDataPath) {
  const Config defaults;
  const ConfigError error = config_error_of([&] { defaults.validate(); });
  EXPECT_EQ(error.key(), "data.path");
  expect_contains(error.what(), {"data.path must be the prefix of an indexed dataset", "got \"\""});
  EXPECT_NO_THROW(valid_config().validate());
}

struct BrokenRule {
  std::string what;
  std::function<void(Config&)> mutate;
  std::string key;                  // expected key()
  std::vector<std::string> parts;   // expected in the message
};

TEST(ConfigValidateTest, EveryBrokenRuleNamesItsDottedKeyAndValue) {
  const std::vector<BrokenRule> rules = {
      {"empty run name", [](Config& c) { c.run.name = ""; }, "run.name", {"run.name must be", "got \"\""}},
      {"run name with slash", [](Config& c) { c.run.name = "a/b"; }, "run.name", {"without '/'", "\"a/b\""}},
      {"empty output dir", [](Config& c) { c.run.output_dir = ""; }, "run.output_dir", {"run.output_dir must be non-empty"}},
      {"zero steps", [](Config& c) { c.run.steps = 0; }, "run.steps", {"run.steps must be >= 1, got 0"}},
      {"unknown device", [](Config& c) { c.run.device = "cudaa"; }, "run.device",
       {"run.device must be one of auto|cpu|cuda, got \"cudaa\"; did you mean 'cuda'?"}},
      {"unknown family", [](Config& c) { c.model.family = "gpt2"; }, "model.family", {"llama|qwen2", "\"gpt2\""}},
      {"zero vocab", [](Config& c) { c.model.vocab_size = 0; }, "model.vocab_size", {"model.vocab_size must be > 0, got 0"}},
      {"negative hidden", [](Config& c) { c.model.hidden_size = -8; }, "model.hidden_size", {"> 0, got -8"}},
      {"zero intermediate", [](Config& c) { c.model.intermediate_size = 0; }, "model.intermediate_size", {"got 0"}},
      {"zero layers", [](Config& c) { c.model.num_hidden_layers = 0; }, "model.num_hidden_layers", {"got 0"}},
      {"zero heads", [](Config& c) { c.model.num_attention_heads = 0; }, "model.num_attention_heads", {"got 0"}},
      {"zero kv heads", [](Config& c) { c.model.num_key_value_heads = 0; }, "model.num_key_value_heads", {"got 0"}},
      {"kv heads not dividing heads", [](Config& c) { c.model.num_key_value_heads = 5; }, "model.num_key_value_heads",
       {"model.num_key_value_heads must divide model.num_attention_heads (32), got 5"}},
      {"negative head dim", [](Config& c) { c.model.head_dim = -1; }, "model.head_dim", {"got -1"}},
      {"hidden not divisible by heads", [](Config& c) { c.model.hidden_size = 4000; c.model.num_attention_heads = 64; c.model.num_key_value_heads = 64; },
       "model.hidden_size", {"multiple of model.num_attention_heads (64)", "got 4000", "model.head_dim"}},
      {"odd explicit head dim", [](Config& c) { c.model.head_dim = 65; }, "model.head_dim", {"must be even", "got 65"}},
      {"odd derived head dim", [](Config& c) { c.model.hidden_size = 96; c.model.num_attention_heads = 32; }, "model.hidden_size",
       {"must be even", "got 3"}},
      {"vocab with extra digits", [](Config& c) { c.model.vocab_size = 320000000000000; }, "model.vocab_size",
       {"model.vocab_size x model.hidden_size = 320000000000000 x 4096 gives the model over 2^50 (1.1e15) parameters"}},
      {"head dim whose projection width overflows int64", [](Config& c) { c.model.head_dim = int64_t{1} << 62; },
       "model.num_attention_heads", {"= 32 x 4611686018427387904 x 4096 gives the model over 2^50"}},
      {"layers times layer size past 2^50", [](Config& c) { c.model.num_hidden_layers = int64_t{1} << 40; },
       "model.num_hidden_layers", {"model.num_hidden_layers x parameters per layer = 1099511627776 x ", "over 2^50"}},
      {"MLP width with extra digits", [](Config& c) { c.model.intermediate_size = int64_t{1} << 50; },
       "model.intermediate_size", {"model.intermediate_size x model.hidden_size = 1125899906842624 x 4096"}},
      {"zero eps", [](Config& c) { c.model.rms_norm_eps = 0.0; }, "model.rms_norm_eps", {"> 0, got 0.0"}},
      {"negative theta", [](Config& c) { c.model.rope_theta = -1.0; }, "model.rope_theta", {"got -1.0"}},
      {"zero max positions", [](Config& c) { c.model.max_position_embeddings = 0; }, "model.max_position_embeddings", {"got 0"}},
      {"zero init range", [](Config& c) { c.model.initializer_range = 0.0; }, "model.initializer_range", {"> 0, got 0.0"}},
      {"qwen2 without biases", [](Config& c) { c.model.family = "qwen2"; }, "model.attention_bias",
       {"true when model.family is qwen2, got false"}},
      {"unknown dtype", [](Config& c) { c.model.dtype = "bf16"; }, "model.dtype", {"float32|bfloat16", "\"bf16\""}},
      {"no batch size", [](Config& c) { c.data.batch_tokens = 0; }, "data.batch_sequences",
       {"exactly one of data.batch_sequences and data.batch_tokens", "data.batch_sequences = 0", "data.batch_tokens = 0"}},
      {"two batch sizes", [](Config& c) { c.data.batch_sequences = 8; }, "data.batch_sequences",
       {"data.batch_sequences = 8", "data.batch_tokens = 65536"}},
      {"negative batch sequences", [](Config& c) { c.data.batch_sequences = -1; }, "data.batch_sequences", {">= 0, got -1"}},
      {"negative batch tokens", [](Config& c) { c.data.batch_tokens = -4; }, "data.batch_tokens", {">= 0, got -4"}},
      {"zero chunk size", [](Config& c) { c.chunking.chunk_size = 0; }, "chunking.chunk_size", {"chunking.chunk_size must be > 0, got 0"}},
      {"zero resident chunks", [](Config& c) { c.chunking.resident_chunks = 0; }, "chunking.resident_chunks", {">= 1, got 0"}},
      {"zero dp", [](Config& c) { c.parallel.dp = 0; }, "parallel.dp", {"parallel.dp must be >= 1, got 0"}},
      {"zero cp", [](Config& c) { c.parallel.cp = 0; }, "parallel.cp", {"got 0"}},
      {"zero pp", [](Config& c) { c.parallel.pp = 0; }, "parallel.pp", {"got 0"}},
      {"zero tp", [](Config& c) { c.parallel.tp = 0; }, "parallel.tp", {"parallel.tp must be >= 1, got 0"}},
      {"tp not dividing the heads", [](Config& c) { c.parallel.tp = 3; }, "parallel.tp",
       {"parallel.tp = 3", "is not a multiple of 3"}},
      {"order naming tp but missing pp", [](Config& c) { c.parallel.order = "dp,cp,tp"; }, "parallel.order",
       {"name dp, cp and pp once each"}},
      {"order missing an axis", [](Config& c) { c.parallel.order = "dp,cp"; }, "parallel.order", {"permutation of dp,cp,pp", "\"dp,cp\""}},
      {"order repeating an axis", [](Config& c) { c.parallel.order = "dp,dp,pp"; }, "parallel.order", {"dp appears more than once"}},
      {"order with unknown axis", [](Config& c) { c.parallel.order = "dp,cq,pp"; }, "parallel.order", {"unknown axis \"cq\"", "did you mean 'cp'?"}},
      {"unknown backend", [](Config& c) { c.parallel.backend = "gloo"; }, "parallel.backend", {"auto|mpi|nccl", "\"gloo\""}},
      {"zero lr", [](Config& c) { c.optim.lr = 0.0; }, "optim.lr", {"optim.lr must be > 0, got 0.0"}},
      {"min lr above lr", [](Config& c) { c.optim.min_lr = 1e-3; }, "optim.min_lr", {"in [0, optim.lr = 0.0003]", "got 0.001"}},
      {"negative min lr", [](Config& c) { c.optim.min_lr = -1e-5; }, "optim.min_lr", {"got -1e-05"}},
      {"negative weight decay", [](Config& c) { c.optim.weight_decay = -0.1; }, "optim.weight_decay", {">= 0, got -0.1"}},
      {"beta1 of one", [](Config& c) { c.optim.beta1 = 1.0; }, "optim.beta1", {"in [0, 1), got 1.0"}},
      {"negative beta2", [](Config& c) { c.optim.beta2 = -0.5; }, "optim.beta2", {"in [0, 1), got -0.5"}},
      {"zero adam eps", [](Config& c) { c.optim.eps = 0.0; }, "optim.eps", {"> 0, got 0.0"}},
      {"negative warmup", [](Config& c) { c.optim.warmup_steps = -1; }, "optim.warmup_steps", {">= 0, got -1"}},
      {"unknown schedule", [](Config& c) { c.optim.schedule = "cosin"; }, "optim.schedule", {"cosine|linear|constant", "did you mean 'cosine'?"}},
      {"negative clip", [](Config& c) { c.optim.max_grad_norm = -1.0; }, "optim.max_grad_norm", {">= 0 (0 disables clipping), got -1.0"}},
      {"zero accumulation", [](Config& c) { c.optim.grad_accumulation = 0; }, "optim.grad_accumulation", {">= 1, got 0"}},
      {"negative checkpoint interval", [](Config& c) { c.checkpoint.interval = -5; }, "checkpoint.interval", {"got -5"}},
      {"keep no checkpoints", [](Config& c) { c.checkpoint.keep_last = 0; }, "checkpoint.keep_last", {">= 1, got 0"}},
      {"unknown log level", [](Config& c) { c.logging.level = "eror"; }, "logging.level", {"debug|info|warn|error", "did you mean 'error'?"}},
      {"zero log interval", [](Config& c) { c.logging.interval = 0; }, "logging.interval", {">= 1, got 0"}},
      {"unknown progress", [](Config& c) { c.logging.progress = "spinner"; }, "logging.progress", {"auto|bar|lines", "\"spinner\""}},
      {"more stages than layers", [](Config& c) { c.model.num_hidden_layers = 2; c.parallel.pp = 4; }, "parallel.pp",
       {"parallel.pp must be <= model.num_hidden_layers (2), got 4"}},
      {"nccl on cpu", [](Config& c) { c.parallel.backend = "nccl"; c.run.device = "cpu"; }, "parallel.backend",
       {"parallel.backend", "run.device", "\"nccl\""}},
  };
  for (const auto& rule : rules) {
    SCOPED_TRACE(rule.what);
    Config config = valid_config();
    rule.mutate(config);
    const ConfigError error = config_error_of([&] { config.validate(); });
    EXPECT_EQ(error.key(), rule.key);
    for (const auto& part : rule.parts) expect_contains(error.what(), {part});
  }
}

TEST(ConfigValidateTest, BoundaryValuesAreAccepted) {
  const std::vector<std::pair<std::string, std::function<void(Config&)>>> cases = {
      {"min_lr equal to lr", [](Config& c) { c.optim.min_lr = c.optim.lr; }},
      {"min_lr zero", [](Config& c) { c.optim.min_lr = 0.0; }},
      {"clipping off", [](Config& c) { c.optim.max_grad_norm = 0.0; }},
      {"betas zero", [](Config& c) { c.optim.beta1 = 0.0; c.optim.beta2 = 0.0; }},
      {"no warmup", [](Config& c) { c.optim.warmup_steps = 0; }},
      {"warmup longer than a smoke-test run", [](Config& c) { c.run.steps = 3; }},
      {"sequence-sized batches", [](Config& c) { c.data.batch_sequences = 16; c.data.batch_tokens = 0; }},
      {"explicit head dim decouples hidden size", [](Config& c) { c.model.hidden_size = 4000; c.model.head_dim = 128; }},
      {"grouped query attention", [](Config& c) { c.model.num_key_value_heads = 8; }},
      {"a 2-trillion-parameter model", [](Config& c) {
         c.model.hidden_size = 32768; c.model.intermediate_size = 131072; c.model.num_hidden_layers = 160;
         c.model.vocab_size = 262144; c.model.num_attention_heads = 256; c.model.num_key_value_heads = 8; }},
      {"qwen2 with biases", [](Config& c) { c.model.family = "qwen2"; c.model.attention_bias = true; }},
      {"one stage per layer", [](Config& c) { c.parallel.pp = c.model.num_hidden_layers; }},
      {"nccl on cuda", [](Config& c) { c.parallel.backend = "nccl"; c.run.device = "cuda"; }},
      {"order with spaces", [](Config& c) { c.parallel.order = "pp, dp, cp"; }},
      {"tp dividing heads, K/V heads, MLP and vocabulary", [](Config& c) { c.parallel.tp = 2; }},
      {"order naming tp", [](Config& c) { c.parallel.order = "tp,dp,cp,pp"; }},
      {"checkpoint only at the end", [](Config& c) { c.checkpoint.interval = 0; }},
  };
  for (const auto& [what, mutate] : cases) {
    SCOPED_TRACE(what);
    Config config = valid_config();
    mutate(config);
    EXPECT_NO_THROW(config.validate());
  }
}

TEST(ModelConfigTest, EffectiveHeadDimDerivesFromHiddenSizeUnlessSet) {
  ModelConfig model;
  EXPECT_EQ(model.effective_head_dim(), 128);  // 4096 / 32
  model.head_dim = 64;
  EXPECT_EQ(model.effective_head_dim(), 64);
}

TEST(ParallelConfigTest, WorldSizeIsTheProductOfTheDegrees) {
  ParallelConfig parallel;
  parallel.dp = 2;
  parallel.cp = 3;
  parallel.pp = 4;
  EXPECT_EQ(parallel.world_size(), 24);
  EXPECT_NO_THROW(parallel.check_world(24));
}

TEST(ParallelConfigTest, WorldMismatchNamesEveryDegreeAndSuggestsAFit) {
  ParallelConfig parallel;
  parallel.dp = 2;
  parallel.pp = 4;
  const ConfigError error = config_error_of([&] { parallel.check_world(6); });
  expect_contains(error.what(), {"parallel: dp (2) x cp (1) x pp (4) x tp (1) = 8 ranks, but the job has 6 ranks",
                                 "mpirun -np 8"});
  EXPECT_EQ(error.keys(), (std::vector<std::string>{"parallel.dp", "parallel.cp", "parallel.pp", "parallel.tp"}));

  const ConfigError fits = config_error_of([&] { parallel.check_world(12); });
  expect_contains(fits.what(), {"set parallel.dp to 3"});
}

TEST(ParallelConfigTest, AxisOrderFollowsTheConfiguredPermutation) {
  ParallelConfig parallel;
  EXPECT_EQ(parallel.axis_order(), (std::vector<std::string>{"dp", "cp", "pp", "tp"})) << "tp innermost when unnamed";
  parallel.order = "pp, dp,cp";
  EXPECT_EQ(parallel.axis_order(), (std::vector<std::string>{"pp", "dp", "cp", "tp"}));
  parallel.order = "tp,pp,dp,cp";
  EXPECT_EQ(parallel.axis_order(), (std::vector<std::string>{"tp", "pp", "dp", "cp"}));
}

TEST(ConfigTest, CheckpointDirDefaultsUnderTheRunFolder) {
  Config config;
  config.run.output_dir = "/scratch/runs";
  config.run.name = "demo";
  EXPECT_EQ(config.checkpoint_dir(), "/scratch/runs/demo/checkpoints");
  config.checkpoint.dir = "/ckpt";
  EXPECT_EQ(config.checkpoint_dir(), "/ckpt");
}

TEST(ConfigErrorTest, FormatsValuesAsYamlWouldReadThem) {
  EXPECT_EQ(format_value(int64_t{-3}), "-3");
  EXPECT_EQ(format_value(1.0), "1.0");
  EXPECT_EQ(format_value(3e-4), "0.0003");
  EXPECT_EQ(format_value(1e-8), "1e-08");
  EXPECT_EQ(format_value(1e6), "1000000.0");
  EXPECT_EQ(format_value(0.0), "0.0");
  EXPECT_EQ(format_value(true), "true");
  EXPECT_EQ(format_value(std::string("a \"b\"\\\n")), "\"a \\\"b\\\"\\\\\\n\"");
}

}  // namespace
}  // namespace chunkflow::configs
