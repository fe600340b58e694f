// The YAML loader: strict typing, unknown/duplicate keys with locations and suggestions, --set
// overrides, validate() errors pointing at the line that set the value, and the resolved dump.
#include "configs/config_loader.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "core/file_io.h"
#include "tests/configs/config_test_util.h"
#include "tests/support/temp_dir.h"

namespace chunkflow::configs {
namespace {

using testing::config_error_of;
using testing::expect_contains;

// Minimal valid file; anything a test adds goes after these two lines (line 3 onwards).
const std::string kBase = "data:\n  path: data/train\n";

std::string parse_error(const std::string& text, const std::vector<std::string>& overrides = {}) {
  return config_error_of([&] { parse_config(text, "run.yaml", overrides); }).what();
}

// --- files and documents --------------------------------------------------------------------

TEST(ConfigLoaderTest, LoadsAFileAndKeepsDefaultsForWhatItLeavesOut) {
  chunkflow::testing::TempDir dir;
  core::write_file_atomic(dir.file("run.yaml"), kBase + "chunking:\n  chunk_size: 8192\n");
  const Config config = load_config(dir.file("run.yaml"));
  EXPECT_EQ(config.data.path, "data/train");
  EXPECT_EQ(config.chunking.chunk_size, 8192);
  EXPECT_EQ(config.chunking.resident_chunks, ChunkingConfig().resident_chunks);
  EXPECT_EQ(config.model, ModelConfig());
  EXPECT_EQ(config.optim, OptimConfig());
}

TEST(ConfigLoaderTest, MissingFileNamesThePath) {
  chunkflow::testing::TempDir dir;
  const std::string path = dir.file("absent.yaml");
  const std::string message = config_error_of([&] { load_config(path); }).what();
  expect_contains(message, {path, "cannot read config file"});
}

TEST(ConfigLoaderTest, MalformedYamlNamesLineColumnAndParserMessage) {
  const std::string message = parse_error(kBase + "chunking:\n  chunk_size: [1, 2\n");
  expect_contains(message, {"run.yaml:5:", "malformed YAML", "end of sequence flow not found"});
}

TEST(ConfigLoaderTest, LoadConfigValidates) {
  chunkflow::testing::TempDir dir;
  core::write_file_atomic(dir.file("run.yaml"), "run:\n  steps: 5\n");
  const ConfigError error = config_error_of([&] { load_config(dir.file("run.yaml")); });
  EXPECT_EQ(error.key(), "data.path");
}

TEST(ConfigLoaderTest, CommentOnlyOrEmptyTextIsAnAllDefaultConfig) {
  const std::vector<std::string> set_path = {"data.path=d"};
  Config expected;
  expected.data.path = "d";
  EXPECT_EQ(parse_config("", "run.yaml", set_path), expected);
  EXPECT_EQ(parse_config("# nothing yet\n", "run.yaml", set_path), expected);
}

TEST(ConfigLoaderTest, TopLevelMustBeAMapOfSections) {
  expect_contains(parse_error("- run\n- data\n"),
                  {"run.yaml:1:1", "top level of a config must be a map of sections", "a sequence"});
  expect_contains(parse_error("42\n"), {"run.yaml:1:1", "must be a map", "got 42"});
}

TEST(ConfigLoaderTest, MoreThanOneDocumentIsAnError) {
  expect_contains(parse_error(kBase + "---\nrun:\n  steps: 3\n"),
                  {"run.yaml:4", "one YAML document, found 2"});
}

// yaml-cpp 0.7's LoadAll loops forever, allocating, on a top-level ',' (jbeder/yaml-cpp#1040).
TEST(ConfigLoaderTest, TopLevelCommaIsMalformedYamlNotAnEndlessLoop) {
  expect_contains(parse_error(","), {"run.yaml:1:1: malformed YAML", "a ',' outside [...] or {...}"});
  expect_contains(parse_error(kBase + "---\n,\n"), {"run.yaml:4:1: malformed YAML"});
}

TEST(ConfigLoaderTest, SectionsMustBeMaps) {
  const ConfigError error = config_error_of([&] { parse_config(kBase + "chunking: 4096\n", "run.yaml"); });
  EXPECT_EQ(error.key(), "chunking");
  expect_contains(error.what(), {"section chunking in run.yaml:3 must be a map of keys, got 4096"});
  expect_contains(parse_error(kBase + "optim:\n  - lr\n"), {"section optim", "a sequence"});
}

TEST(ConfigLoaderTest, EmptySectionKeepsItsDefaults) {
  const Config config = parse_config(kBase + "chunking:\n", "run.yaml");
  EXPECT_EQ(config.chunking, ChunkingConfig());
}

// --- unknown and duplicate keys -------------------------------------------------------------

TEST(ConfigLoaderTest, UnknownKeyNamesFileLineAndSuggestsTheNearestKey) {
  const std::string text = kBase + "chunking:\n  chunk_sze: 8192\n";
  const ConfigError error = config_error_of([&] { parse_config(text, "run.yaml"); });
  EXPECT_EQ(std::string(error.what()),
            "unknown key chunking.chunk_sze in run.yaml:4; did you mean 'chunk_size'?");
  EXPECT_EQ(error.key(), "chunking.chunk_sze");
}

TEST(ConfigLoaderTest, UnknownKeyFarFromEveryKeyHasNoSuggestion) {
  const std::string message = parse_error(kBase + "model:\n  flux_capacitor: 1\n");
  expect_contains(message, {"unknown key model.flux_capacitor in run.yaml:4"});
  EXPECT_EQ(message.find("did you mean"), std::string::npos) << message;
}

TEST(ConfigLoaderTest, UnknownSectionSuggestsTheNearestSection) {
  EXPECT_EQ(parse_error(kBase + "chunkng:\n  chunk_size: 8\n"),
            "unknown section chunkng in run.yaml:3; did you mean 'chunking'?");
}

TEST(ConfigLoaderTest, DuplicateKeyNamesBothLines) {
  const std::string message =
      parse_error(kBase + "chunking:\n  chunk_size: 8\n  resident_chunks: 2\n  chunk_size: 16\n");
  expect_contains(message, {"duplicate key chunking.chunk_size in run.yaml:6", "already set at run.yaml:4"});
}

TEST(ConfigLoaderTest, DuplicateSectionNamesBothLines) {
  const std::string message = parse_error(kBase + "run:\n  steps: 4\nrun:\n  seed: 1\n");
  expect_contains(message, {"duplicate section run in run.yaml:5", "run.yaml:3"});
}

// --- types ----------------------------------------------------------------------------------

struct WrongType {
  std::string yaml_value;   // as written after "chunk_size: " etc.
  std::string section, key;
  std::string expected;     // the expected type, as worded in the message
  std::string shown;        // the offending value, as quoted in the message
};

TEST(ConfigLoaderTest, WrongTypesNameFileLineKeyValueAndExpectedType) {
  const std::vector<WrongType> cases = {
      {"1.5", "chunking", "chunk_size", "an integer", "got 1.5"},
      {"abc", "chunking", "chunk_size", "an integer", "got abc"},
      {"true", "chunking", "chunk_size", "an integer", "got true"},
      {"\"12\"", "chunking", "chunk_size", "an integer", "got \"12\" (a quoted string)"},
      {"0x10", "chunking", "chunk_size", "an integer", "got 0x10"},
      {"99999999999999999999", "run", "seed", "an integer that fits in 64 bits", "got 99999999999999999999"},
      {"yes", "logging", "trace", "true or false", "got yes"},
      {"1", "logging", "trace", "true or false", "got 1"},
      {"\"true\"", "logging", "trace", "true or false", "got \"true\""},
      {"abc", "optim", "lr", "a number", "got abc"},
      {".", "optim", "lr", "a number", "got ."},
      {"1e", "optim", "lr", "a number", "got 1e"},
      {"1.5.", "optim", "lr", "a number", "got 1.5."},
      {"+", "chunking", "chunk_size", "an integer", "got +"},
      {"false", "optim", "lr", "a number", "got false"},
      {".inf", "optim", "lr", "a number", "got .inf"},
      {"1e999", "optim", "lr", "a finite number", "got 1e999"},
      {"{a: 1}", "run", "name", "a string", "got a map"},
      {"[a, b]", "run", "name", "a string", "got a sequence"},
      {"", "run", "name", "a string", "got null"},
      {"~", "chunking", "chunk_size", "an integer", "got null"},
      {"null", "optim", "lr", "a number", "got null"},
      {"", "logging", "trace", "true or false", "got null"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.section + "." + c.key + ": " + c.yaml_value);
    const std::string text = kBase + c.section + ":\n  " + c.key + ": " + c.yaml_value + "\n";
    const ConfigError error = config_error_of([&] { parse_config(text, "run.yaml"); });
    EXPECT_EQ(error.key(), c.section + "." + c.key);
    expect_contains(error.what(), {c.section + "." + c.key + " must be " + c.expected, c.shown,
                                   "(run.yaml:4)"});
  }
}

TEST(ConfigLoaderTest, NullStringValueSuggestsQuotingAnEmptyString) {
  expect_contains(parse_error(kBase + "model:\n  init_from:\n"), {"write \"\" for an empty string"});
  EXPECT_EQ(parse_config(kBase + "model:\n  init_from: \"\"\n", "run.yaml").model.init_from, "");
}

TEST(ConfigLoaderTest, FloatKeysAcceptIntegersAndExponents) {
  const Config config =
      parse_config(kBase + "optim:\n  lr: 1\n  min_lr: 1e-3\n  eps: -.5e-8\n", "x", {"optim.eps=1E-9"});
  EXPECT_EQ(config.optim.lr, 1.0);
  EXPECT_EQ(config.optim.min_lr, 1e-3);
  EXPECT_EQ(config.optim.eps, 1e-9);
}

TEST(ConfigLoaderTest, StringKeysTakeAnyScalarAsText) {
  const Config config = parse_config(
      kBase + "run:\n  name: 123\n  output_dir: 'quoted dir'\nmodel:\n  init_from: true\n", "run.yaml");
  EXPECT_EQ(config.run.name, "123");
  EXPECT_EQ(config.run.output_dir, "quoted dir");
  EXPECT_EQ(config.model.init_from, "true");
}

TEST(ConfigLoaderTest, IntegerAndBoolKeysAcceptTheirPlainForms) {
  const Config config = parse_config(
      kBase + "run:\n  seed: -7\nchunking:\n  chunk_size: +512\n  pack_into_tail: false\n", "run.yaml");
  EXPECT_EQ(config.run.seed, -7);
  EXPECT_EQ(config.chunking.chunk_size, 512);
  EXPECT_FALSE(config.chunking.pack_into_tail);
}

// A std::regex check used to recurse once per character and overflow the stack here.
TEST(ConfigLoaderTest, HundredThousandDigitNumbersAreCheckedWithoutCrashing) {
  const std::string digits(100000, '7');
  expect_contains(parse_error(kBase + "run:\n  seed: " + digits + "\n"),
                  {"run.seed must be an integer that fits in 64 bits", "(run.yaml:4)"});
  expect_contains(parse_error(kBase + "optim:\n  lr: " + digits + "\n"),
                  {"optim.lr must be a finite number in double range", "(run.yaml:4)"});
  expect_contains(parse_error(kBase + "chunking:\n  chunk_size: " + digits + "x\n"),
                  {"chunking.chunk_size must be an integer, got 777"});
  const std::string zeros(100000, '0');
  const Config config = parse_config(
      kBase + "chunking:\n  chunk_size: " + zeros + "8192\noptim:\n  lr: 1." + zeros + "\n", "run.yaml");
  EXPECT_EQ(config.chunking.chunk_size, 8192);
  EXPECT_EQ(config.optim.lr, 1.0);
}

// --- validate() through the loader ----------------------------------------------------------

TEST(ConfigLoaderTest, OutOfRangeValueNamesTheLineThatSetIt) {
  const ConfigError error =
      config_error_of([&] { parse_config(kBase + "run:\n  seed: 1\nchunking:\n  chunk_size: 0\n", "run.yaml"); });
  EXPECT_EQ(std::string(error.what()), "chunking.chunk_size must be > 0, got 0 (run.yaml:6)");
  EXPECT_EQ(error.key(), "chunking.chunk_size");
}

TEST(ConfigLoaderTest, RuleBrokenByADefaultSaysTheKeyWasNotSet) {
  expect_contains(parse_error("run:\n  steps: 5\n"), {"data.path must be", "(default, not set in run.yaml)"});
}

TEST(ConfigLoaderTest, CrossSectionRuleNamesEachKeysSource) {
  const std::string message = parse_error(kBase + "model:\n  num_hidden_layers: 2\nparallel:\n  pp: 4\n");
  expect_contains(message, {"parallel.pp must be <= model.num_hidden_layers (2), got 4",
                            "parallel.pp: run.yaml:6", "model.num_hidden_layers: run.yaml:4"});
}

TEST(ConfigLoaderTest, BatchRuleNamesBothKeysAndValues) {
  const std::string message = parse_error(kBase + "  batch_sequences: 8\n");
  expect_contains(message, {"data.batch_sequences = 8", "data.batch_tokens = 65536",
                            "data.batch_sequences: run.yaml:3", "data.batch_tokens: default"});
}

// --- --set overrides ------------------------------------------------------------------------

TEST(ConfigLoaderTest, OverridesReplaceFileValuesAndSetKeysTheFileLacks) {
  const Config config = parse_config(kBase + "chunking:\n  chunk_size: 8192\n", "run.yaml",
                                     {"chunking.chunk_size=1024", "optim.lr=1e-3",
                                      "logging.trace=true", "run.name=overridden"});
  EXPECT_EQ(config.chunking.chunk_size, 1024);
  EXPECT_EQ(config.optim.lr, 1e-3);
  EXPECT_TRUE(config.logging.trace);
  EXPECT_EQ(config.run.name, "overridden");
}

TEST(ConfigLoaderTest, LaterOverrideOfTheSameKeyWins) {
  const Config config =
      parse_config(kBase, "run.yaml", {"chunking.chunk_size=1024", "chunking.chunk_size=2048"});
  EXPECT_EQ(config.chunking.chunk_size, 2048);
}

TEST(ConfigLoaderTest, OverrideValuesAreTypedLikeFileValues) {
  const ConfigError error =
      config_error_of([&] { parse_config(kBase, "run.yaml", {"chunking.chunk_size=abc"}); });
  EXPECT_EQ(std::string(error.what()),
            "chunking.chunk_size must be an integer, got abc (--set chunking.chunk_size=abc)");
  expect_contains(parse_error(kBase, {"data.shuffle=yes"}), {"true or false", "--set data.shuffle=yes"});
  expect_contains(parse_error(kBase, {"run.name="}), {"run.name must be a string, got null", "--set run.name="});
  EXPECT_EQ(parse_config(kBase, "run.yaml", {"run.name=\"1.5\""}).run.name, "1.5");
}

TEST(ConfigLoaderTest, OverrideOfAnUnknownKeySuggestsTheNearestKey) {
  EXPECT_EQ(parse_error(kBase, {"chunking.chunk_sze=1"}),
            "unknown key chunking.chunk_sze in --set chunking.chunk_sze=1; did you mean 'chunk_size'?");
  EXPECT_EQ(parse_error(kBase, {"optm.lr=1"}),
            "unknown section optm in --set optm.lr=1; did you mean 'optim'?");
}

TEST(ConfigLoaderTest, MalformedOverridesAreRejected) {
  expect_contains(parse_error(kBase, {"chunking.chunk_size"}),
                  {"malformed override 'chunking.chunk_size'", "no '='", "section.key=value"});
  expect_contains(parse_error(kBase, {"chunk_size=8"}), {"malformed override 'chunk_size=8'", "no '.'"});
  expect_contains(parse_error(kBase, {".chunk_size=8"}), {"malformed override", "empty section or key"});
  expect_contains(parse_error(kBase, {"run.name=[a"}), {"malformed value in --set run.name=[a"});
}

TEST(ConfigLoaderTest, ValidateErrorFromAnOverrideNamesTheOverride) {
  EXPECT_EQ(parse_error(kBase + "chunking:\n  chunk_size: 8\n", {"chunking.chunk_size=0"}),
            "chunking.chunk_size must be > 0, got 0 (--set chunking.chunk_size=0)");
}

// --- resolved dump --------------------------------------------------------------------------

Config unusual_config() {
  Config config;
  config.run.name = "odd: \"name\" # with \\ and\ttab";
  config.run.output_dir = "/tmp/ünïcode dir";
  config.run.seed = -42;
  config.run.steps = 7;
  config.run.device = "cpu";
  config.model.family = "qwen2";
  config.model.attention_bias = true;
  config.model.tie_word_embeddings = true;
  config.model.vocab_size = 151936;
  config.model.hidden_size = 896;
  config.model.intermediate_size = 4864;
  config.model.num_hidden_layers = 24;
  config.model.num_attention_heads = 14;
  config.model.num_key_value_heads = 2;
  config.model.head_dim = 64;
  config.model.rms_norm_eps = 1e-5;
  config.model.rope_theta = 1000000.0;
  config.model.max_position_embeddings = 32768;
  config.model.initializer_range = 0.1 + 0.2;  // not exactly representable in short form
  config.model.init_from = "/models/Qwen2.5-0.5B";
  config.model.dtype = "bfloat16";
  config.data.path = "data/train";
  config.data.loss_mask_path = "data/mask";
  config.data.batch_sequences = 32;
  config.data.batch_tokens = 0;
  config.data.shuffle = false;
  config.chunking.chunk_size = 8192;
  config.chunking.resident_chunks = 3;
  config.chunking.pack_into_tail = false;
  config.parallel.dp = 2;
  config.parallel.order = "pp,dp,cp";
  config.parallel.backend = "mpi";
  config.optim.lr = 1.0 / 3.0;
  config.optim.min_lr = 0.0;
  config.optim.warmup_steps = 3;
  config.optim.schedule = "linear";
  config.optim.max_grad_norm = 0.0;
  config.optim.grad_accumulation = 4;
  config.optim.fused = false;
  config.checkpoint.dir = "";
  config.checkpoint.interval = 5;
  config.checkpoint.resume = "auto";
  config.logging.level = "debug";
  config.logging.tensorboard = false;
  config.logging.trace = true;
  config.logging.progress = "lines";
  config.logging.profile_step = 7;
  return config;
}

TEST(ConfigLoaderTest, ResolvedYamlParsesBackToAnEqualConfig) {
  for (const Config& original : {parse_config(kBase, "run.yaml"), unusual_config()}) {
    const std::string yaml = to_yaml(original);
    const Config reparsed = parse_config(yaml, "resolved.yaml");
    EXPECT_EQ(reparsed, original) << yaml;
    EXPECT_EQ(to_yaml(reparsed), yaml);
  }
}

TEST(ConfigLoaderTest, ResolvedYamlWritesEverySectionAndKey) {
  const std::string yaml = to_yaml(Config());
  for (const auto& key : all_keys()) {
    const auto dot = key.find('.');
    const std::string section = key.substr(0, dot) + ":\n";
    const std::string line = "\n  " + key.substr(dot + 1) + ": ";
    const auto section_at = yaml.find("\n" + section);
    ASSERT_NE(section_at, std::string::npos) << key;
    EXPECT_NE(yaml.find(line, section_at), std::string::npos) << key << "\n" << yaml;
  }
}

TEST(ConfigLoaderTest, WrittenResolvedConfigLoadsBackEqual) {
  chunkflow::testing::TempDir dir;
  const Config original = unusual_config();
  write_resolved_config(original, dir.file("resolved.yaml"));
  EXPECT_EQ(load_config(dir.file("resolved.yaml")), original);
}

TEST(ConfigLoaderTest, AllKeysListsEveryFieldOnceInFileOrder) {
  const std::vector<std::string> keys = all_keys();
  EXPECT_EQ(std::set<std::string>(keys.begin(), keys.end()).size(), keys.size());
  EXPECT_EQ(keys.front(), "run.name");
  EXPECT_EQ(keys.back(), "logging.profile_step");
  for (const char* key : {"model.num_key_value_heads", "data.batch_tokens", "chunking.chunk_size",
                          "parallel.order", "optim.max_grad_norm", "optim.fused", "checkpoint.resume"}) {
    EXPECT_NE(std::find(keys.begin(), keys.end(), key), keys.end()) << key;
  }
  // Every key is settable by --set, so the list is exactly what the loader accepts.
  for (const auto& key : keys) {
    const std::string message = parse_error(kBase, {key + "=[]"});
    EXPECT_EQ(message.find("unknown"), std::string::npos) << message;
  }
}

}  // namespace
}  // namespace chunkflow::configs
