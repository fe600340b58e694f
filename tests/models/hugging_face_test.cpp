// Hugging Face import/export against the real library: small random Llama and Qwen2 models built
// by `transformers` (pinned in scripts/bootstrap.sh, CPU, fp32 and bf16, single file and sharded)
// are imported and must give transformers' logits (max abs diff <= 1e-4, fp32); after a few
// training steps the export must load in transformers and give our logits again; HF -> ours ->
// HF is bit-identical; broken directories are errors naming the tensor or key.
#include "models/hugging_face.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/file_io.h"
#include "models/safetensors.h"
#include "tests/support/expect_error.h"
#include "tests/support/temp_dir.h"

namespace chunkflow::models {
namespace {

using chunkflow::testing::contains;
using chunkflow::testing::error_message;

void run_python(const testing::TempDir& dir, const std::string& code, const std::string& arguments) {
  const std::string script = dir.file("script.py");
  {
    std::ofstream out(script);
    out << code;
  }
  const std::string command = testing::python_executable() + " " + script + " " + arguments;
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
}

// The two test sequences, as transformers sees them (one forward each).
const std::vector<std::vector<int64_t>> kSequences = {{5, 17, 3, 99, 42, 7, 7, 64, 1, 88, 23},
                                                      {9, 2, 55, 31, 76}};

// Builds Hugging Face models and their logits on kSequences: argv = out_dir.
constexpr const char* kMakeModels = R"(
import sys, json, torch, transformers
from safetensors.torch import save_file
out = sys.argv[1]
sequences = [[5, 17, 3, 99, 42, 7, 7, 64, 1, 88, 23], [9, 2, 55, 31, 76]]
def build(name, config, dtype, shard):
    torch.manual_seed(1234)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    model = model.to(dtype)
    model.save_pretrained(f"{out}/{name}", safe_serialization=True, max_shard_size=shard)
    model = model.float().eval()
    logits = {}
    with torch.no_grad():
        for i, seq in enumerate(sequences):
            logits[f"seq{i}"] = model(torch.tensor([seq])).logits[0].contiguous()
    save_file(logits, f"{out}/{name}/reference_logits.safetensors")
llama = transformers.LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                 num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                                 rope_theta=10000.0, max_position_embeddings=256, attention_bias=True,
                                 tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
qwen = transformers.Qwen2Config(vocab_size=101, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
                                num_attention_heads=8, num_key_value_heads=2, rms_norm_eps=1e-6,
                                rope_theta=1000000.0, max_position_embeddings=256, tie_word_embeddings=True)
build("llama", llama, torch.float32, "20KB")
build("qwen2", qwen, torch.float32, "5GB")
build("llama_bf16", llama, torch.bfloat16, "5GB")
)";

// Loads an exported directory with transformers and writes its logits: argv = model_dir.
constexpr const char* kLogitsOf = R"(
import sys, torch, transformers
from safetensors.torch import save_file
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
sequences = [[5, 17, 3, 99, 42, 7, 7, 64, 1, 88, 23], [9, 2, 55, 31, 76]]
with torch.no_grad():
    logits = {f"seq{i}": model(torch.tensor([s])).logits[0].contiguous() for i, s in enumerate(sequences)}
save_file(logits, sys.argv[1] + "/transformers_logits.safetensors")
)";

// Models with each RoPE scaling transformers defines and we implement, same weights (seed and
// architecture as "llama"/"qwen2", context 32 stretched to 128), and their logits on one 96-token
// sequence, most of it past the original context: argv = out_dir.
constexpr const char* kMakeScaledModels = R"(
import sys, torch, transformers
from safetensors.torch import save_file
out = sys.argv[1]
sequence = [(i * 37 + 11) % 101 for i in range(96)]
def build(name, config):
    torch.manual_seed(1234)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    model.save_pretrained(f"{out}/{name}", safe_serialization=True)
    with torch.no_grad():
        logits = model.eval()(torch.tensor([sequence])).logits[0].contiguous()
    save_file({"seq0": logits}, f"{out}/{name}/reference_logits.safetensors")
def llama(rope_scaling, max_positions=128):
    return transformers.LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                                    rope_theta=10000.0, max_position_embeddings=max_positions,
                                    rope_scaling=rope_scaling)
build("plain", llama(None, 32))
build("linear", llama({"rope_type": "linear", "factor": 4.0}))
build("llama3", llama({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 32}))
build("yarn", llama({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}))
build("yarn_mscale", llama({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                            "beta_fast": 16.0, "beta_slow": 2.0, "mscale": 0.707, "mscale_all_dim": 1.0}))
build("yarn_v4_type", llama({"type": "yarn", "factor": 3.0, "attention_factor": 1.5, "truncate": False}))
build("qwen2_yarn", transformers.Qwen2Config(vocab_size=101, hidden_size=64, intermediate_size=80,
                                             num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                                             rope_theta=1000000.0, max_position_embeddings=128,
                                             tie_word_embeddings=True,
                                             rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                           "original_max_position_embeddings": 32}))
)";

// The 96-token sequence of kMakeScaledModels.
std::vector<int64_t> long_sequence() {
  std::vector<int64_t> sequence;
  for (int64_t index = 0; index < 96; ++index) sequence.push_back((index * 37 + 11) % 101);
  return sequence;
}

// Loads a directory with transformers and writes its logits on the 96-token sequence: argv = dir.
constexpr const char* kLongLogitsOf = R"(
import sys, torch, transformers
from safetensors.torch import save_file
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
sequence = [(i * 37 + 11) % 101 for i in range(96)]
with torch.no_grad():
    logits = model(torch.tensor([sequence])).logits[0].contiguous()
save_file({"seq0": logits}, sys.argv[1] + "/transformers_logits.safetensors")
)";

// The sequences packed into one chunk (one segment each): our logits per sequence.
std::vector<torch::Tensor> our_logits(CausalLM& model, const std::vector<std::vector<int64_t>>& sequences = kSequences) {
  std::vector<int64_t> ids, positions;
  std::vector<int32_t> cu{0};
  int64_t longest = 0;
  for (const auto& sequence : sequences) {
    for (size_t index = 0; index < sequence.size(); ++index) {
      ids.push_back(sequence[index]);
      positions.push_back(static_cast<int64_t>(index));
    }
    cu.push_back(cu.back() + static_cast<int32_t>(sequence.size()));
    longest = std::max<int64_t>(longest, static_cast<int64_t>(sequence.size()));
  }
  ChunkBatch batch;
  batch.input_ids = torch::tensor(ids, torch::kLong);
  batch.positions = torch::tensor(positions, torch::kLong);
  batch.labels = torch::full({static_cast<int64_t>(ids.size())}, -100, torch::kLong);
  batch.cu_seqlens_q = torch::tensor(cu, torch::kInt);
  batch.cu_seqlens_k = batch.cu_seqlens_q.clone();
  batch.max_seqlen_q = batch.max_seqlen_k = longest;
  torch::NoGradGuard no_grad;
  const torch::Tensor logits = torch::matmul(model->forward_chunk(batch).hidden, model->lm_head_weight().t());
  std::vector<torch::Tensor> per_sequence;
  for (size_t index = 0; index < sequences.size(); ++index) {
    per_sequence.push_back(logits.narrow(0, cu[index], cu[index + 1] - cu[index]));
  }
  return per_sequence;
}

double max_difference(const std::vector<torch::Tensor>& ours, const std::string& reference_file) {
  const SafetensorsFile reference(reference_file);
  double worst = 0;
  for (size_t index = 0; index < ours.size(); ++index) {
    const torch::Tensor expected = reference.load("seq" + std::to_string(index));
    EXPECT_EQ(expected.sizes(), ours[index].sizes());
    worst = std::max(worst, (ours[index] - expected).abs().max().item<double>());
  }
  return worst;
}

CausalLM import(const std::string& directory) {
  const configs::ModelConfig config = read_hf_config(directory);
  CausalLM model(config, ModelStage{}, 0);
  load_hf_weights(model, directory);
  return model;
}

class HuggingFaceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    models_ = new testing::TempDir();
    run_python(*models_, kMakeModels, models_->path());
  }
  static void TearDownTestSuite() {
    delete models_;
    models_ = nullptr;
  }
  static std::string model_dir(const std::string& name) { return models_->file(name); }
  static testing::TempDir* models_;
};
testing::TempDir* HuggingFaceTest::models_ = nullptr;

TEST_F(HuggingFaceTest, ReadsTheConfigOfBothFamilies) {
  const configs::ModelConfig llama = read_hf_config(model_dir("llama"));
  EXPECT_EQ(llama.family, "llama");
  EXPECT_EQ(llama.num_hidden_layers, 3);
  EXPECT_EQ(llama.num_key_value_heads, 2);
  EXPECT_TRUE(llama.attention_bias);
  EXPECT_FALSE(llama.tie_word_embeddings);
  EXPECT_EQ(llama.init_from, model_dir("llama"));
  const configs::ModelConfig qwen = read_hf_config(model_dir("qwen2"));
  EXPECT_EQ(qwen.family, "qwen2");
  EXPECT_TRUE(qwen.attention_bias);  // Qwen2's q/k/v biases
  EXPECT_TRUE(qwen.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(qwen.rope_theta, 1000000.0);
}

TEST_F(HuggingFaceTest, ImportedModelsGiveTransformersLogits) {
  for (const char* name : {"llama", "qwen2", "llama_bf16"}) {
    CausalLM model = import(model_dir(name));
    const double difference = max_difference(our_logits(model), model_dir(name) + "/reference_logits.safetensors");
    EXPECT_LE(difference, 1e-4) << name;
  }
}

TEST_F(HuggingFaceTest, EveryPipelineStageLoadsItsOwnPart) {
  const configs::ModelConfig config = read_hf_config(model_dir("llama"));
  const CausalLM whole = import(model_dir("llama"));
  for (int stage = 0; stage < 3; ++stage) {
    CausalLM part(config, pipeline_stage(config, stage, 3), 99);
    load_hf_weights(part, model_dir("llama"));
    const auto reference = whole->named_parameters();
    for (const auto& parameter : part->named_parameters()) {
      EXPECT_TRUE(torch::equal(parameter.value(), reference[parameter.key()])) << parameter.key();
    }
  }
}

TEST_F(HuggingFaceTest, RoundTripIsBitIdentical) {
  testing::TempDir out;
  for (const auto& [name, dtype] : {std::pair<std::string, std::string>{"llama", "float32"}, {"qwen2", "float32"},
                                    {"llama_bf16", "bfloat16"}}) {
    CausalLM model = import(model_dir(name));
    HfExportOptions options;
    options.dtype = dtype;
    options.source_directory = model_dir(name);
    write_hf_directory(out.file(name), hf_named_tensors(model, dtype), model->config(), options);
    const auto original = load_safetensors_directory(model_dir(name));
    const auto exported = load_safetensors_directory(out.file(name));
    EXPECT_EQ(exported.size(), original.size()) << name;
    for (const auto& [tensor_name, tensor] : original) {
      ASSERT_TRUE(exported.count(tensor_name)) << name << ": " << tensor_name;
      EXPECT_EQ(exported.at(tensor_name).scalar_type(), tensor.scalar_type()) << tensor_name;
      EXPECT_TRUE(torch::equal(exported.at(tensor_name), tensor)) << name << ": " << tensor_name;
    }
  }
  // Token ids of the source config.json are carried through.
  EXPECT_TRUE(contains(core::read_file(out.file("llama") + "/generation_config.json"), "\"eos_token_id\": 2"));
  EXPECT_TRUE(contains(core::read_file(out.file("llama") + "/config.json"), "\"bos_token_id\": 1"));
}

TEST_F(HuggingFaceTest, ExportAfterTrainingLoadsInTransformersWithOurLogits) {
  testing::TempDir out;
  for (const char* name : {"llama", "qwen2"}) {
    CausalLM model = import(model_dir(name));
    // A few optimizer steps so the exported weights are not the imported ones.
    torch::optim::AdamW optimizer(model->parameters(), torch::optim::AdamWOptions(1e-2));
    const std::vector<std::vector<int64_t>> batch_ids = kSequences;
    for (int step = 0; step < 3; ++step) {
      optimizer.zero_grad();
      torch::Tensor total = torch::zeros({});
      for (const auto& sequence : batch_ids) {
        ChunkBatch batch;
        const int64_t length = static_cast<int64_t>(sequence.size());
        batch.input_ids = torch::tensor(sequence, torch::kLong);
        batch.positions = torch::arange(length, torch::kLong);
        batch.labels = torch::roll(batch.input_ids, -1);
        batch.labels.index_put_({length - 1}, -100);
        batch.cu_seqlens_q = torch::tensor({0, static_cast<int32_t>(length)}, torch::kInt);
        batch.cu_seqlens_k = batch.cu_seqlens_q.clone();
        batch.max_seqlen_q = batch.max_seqlen_k = length;
        total = total + model->loss_sum(model->forward_chunk(batch).hidden, batch.labels);
      }
      total.backward();
      optimizer.step();
    }
    const std::string exported = out.file(name);
    HfExportOptions options;
    options.source_directory = model_dir(name);
    options.max_shard_bytes = 30000;  // several shards
    write_hf_directory(exported, hf_named_tensors(model, "float32"), model->config(), options);
    run_python(out, kLogitsOf, exported);
    EXPECT_LE(max_difference(our_logits(model), exported + "/transformers_logits.safetensors"), 1e-4) << name;
    // Trained weights moved away from the imported ones (so the check above is not the import's).
    EXPECT_GT(max_difference(our_logits(model), model_dir(name) + "/reference_logits.safetensors"), 1e-3) << name;
  }
}

TEST_F(HuggingFaceTest, BrokenDirectoriesNameTheTensorOrKey) {
  testing::TempDir dir;
  const std::string source = model_dir("qwen2");
  const auto tensors = load_safetensors_directory(source);
  const std::string config_json = core::read_file(source + "/config.json");
  const auto make = [&](const std::string& name, const std::function<void(std::vector<std::pair<std::string, torch::Tensor>>&)>& edit,
                        const std::string& config_text) {
    std::vector<std::pair<std::string, torch::Tensor>> copy(tensors.begin(), tensors.end());
    edit(copy);
    core::make_directories(dir.file(name));
    save_safetensors(dir.file(name) + "/model.safetensors", copy);
    core::write_file_atomic(dir.file(name) + "/config.json", config_text);
    return dir.file(name);
  };
  const configs::ModelConfig config = read_hf_config(source);

  const std::string missing = make("missing", [](auto& list) {
    std::erase_if(list, [](const auto& named) { return named.first == "model.layers.1.mlp.up_proj.weight"; });
  }, config_json);
  EXPECT_TRUE(contains(error_message([&] { CausalLM model(config, ModelStage{}, 0); load_hf_weights(model, missing); }),
                       "missing: model.layers.1.mlp.up_proj.weight"));

  const std::string extra = make("extra", [](auto& list) { list.emplace_back("model.layers.7.mlp.up_proj.weight", torch::ones({2})); }, config_json);
  EXPECT_TRUE(contains(error_message([&] { CausalLM model(config, ModelStage{}, 0); load_hf_weights(model, extra); }),
                       "does not have: model.layers.7.mlp.up_proj.weight"));

  const std::string shaped = make("shaped", [](auto& list) {
    for (auto& named : list) {
      if (named.first == "model.norm.weight") named.second = torch::ones({63});
    }
  }, config_json);
  EXPECT_TRUE(contains(error_message([&] { CausalLM model(config, ModelStage{}, 0); load_hf_weights(model, shaped); }),
                       "tensor 'model.norm.weight' has shape [63] but the model (from config.json) needs [64]"));

  const auto edited = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json json = nlohmann::json::parse(config_json);
    edit(json);
    return json.dump(2);
  };
  const std::string scaling = make("scaling", [](auto&) {}, edited([](nlohmann::json& json) {
    json["rope_scaling"] = {{"type", "llama3"}, {"factor", 8.0}};
  }));
  EXPECT_TRUE(contains(error_message([&] { read_hf_config(scaling); }),
                       "describes a model this build cannot hold: model.rope_original_max_position_embeddings must "
                       "be > 0 when model.rope_type is llama3 (the pre-training context), got 0"));
  const std::string dynamic = make("dynamic", [](auto&) {}, edited([](nlohmann::json& json) {
    json["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 2.0}};
  }));
  EXPECT_TRUE(contains(error_message([&] { read_hf_config(dynamic); }),
                       "\"rope_scaling\" = {\"factor\":2.0,\"rope_type\":\"dynamic\"}: rope_type \"dynamic\" is not "
                       "supported; supported are default, linear, llama3, yarn (dynamic and longrope recompute"));
  const std::string stray = make("stray", [](auto&) {}, edited([](nlohmann::json& json) {
    json["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 2.0}, {"beta_fast", 8.0}};
  }));
  EXPECT_TRUE(contains(error_message([&] { read_hf_config(stray); }),
                       "\"rope_scaling\" has \"beta_fast\" = 8.0, which linear RoPE does not have (rotary on every "
                       "dimension; its keys are rope_type, rope_theta, factor)"));

  // transformers 5 writes rope_theta inside "rope_parameters" (found on the GPU machine's image:
  // read from the top level only, a Qwen2 model got theta 10000 instead of 1e6, silently).
  const std::string generation5 = make("generation5", [](auto&) {}, edited([](nlohmann::json& json) {
    json.erase("rope_theta");
    json["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 500000.0}};
  }));
  EXPECT_DOUBLE_EQ(read_hf_config(generation5).rope_theta, 500000.0);
  const std::string disagreeing = make("disagreeing", [](auto&) {}, edited([](nlohmann::json& json) {
    json["rope_theta"] = 10000.0;
    json["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 500000.0}};
  }));
  EXPECT_TRUE(contains(error_message([&] { read_hf_config(disagreeing); }),
                       "\"rope_theta\" = 10000 and \"rope_parameters\".rope_theta = 500000 disagree"));
  const std::string yarn = make("yarn", [](auto&) {}, edited([](nlohmann::json& json) {
    json["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  }));
  EXPECT_EQ(read_hf_config(yarn).rope_type, "yarn");
  EXPECT_DOUBLE_EQ(read_hf_config(yarn).rope_factor, 4.0);
  const std::string two_scalings = make("two_scalings", [](auto&) {}, edited([](nlohmann::json& json) {
    json["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 2.0}};
    json["rope_parameters"] = {{"rope_type", "linear"}, {"factor", 4.0}};
  }));
  EXPECT_TRUE(contains(error_message([&] { read_hf_config(two_scalings); }), "describe different RoPE scalings"));
  const std::string partial = make("partial", [](auto&) {}, edited([](nlohmann::json& json) {
    json["rope_parameters"] = {{"rope_type", "default"}, {"partial_rotary_factor", 0.5}};
  }));
  EXPECT_TRUE(contains(error_message([&] { read_hf_config(partial); }),
                       "\"rope_parameters\" has \"partial_rotary_factor\" = 0.5, which default RoPE does not have"));

  const std::string mistral = make("mistral", [](auto&) {}, edited([](nlohmann::json& json) {
    json["architectures"] = {"MistralForCausalLM"};
    json["model_type"] = "mistral";
  }));
  EXPECT_TRUE(contains(error_message([&] { read_hf_config(mistral); }), "supported are LlamaForCausalLM"));

  const std::string keyless = make("keyless", [](auto&) {}, edited([](nlohmann::json& json) { json.erase("num_hidden_layers"); }));
  EXPECT_TRUE(contains(error_message([&] { read_hf_config(keyless); }), "required key \"num_hidden_layers\" is missing"));

  const std::string typed = make("typed", [](auto&) {}, edited([](nlohmann::json& json) { json["hidden_size"] = "64"; }));
  EXPECT_TRUE(contains(error_message([&] { read_hf_config(typed); }), "\"hidden_size\" must be an integer, got \"64\""));

  // Found while writing hf_model_fuzz, reproduced with it: a head_dim this large was accepted and
  // then overflowed int64 in the projection widths (undefined behaviour); the model section now
  // bounds the parameter count.
  const std::string huge = make("huge", [](auto&) {}, edited([](nlohmann::json& json) {
    json["head_dim"] = int64_t{1} << 62;
  }));
  EXPECT_TRUE(contains(error_message([&] { read_hf_config(huge); }),
                       "describes a model this build cannot hold: model.num_attention_heads x head_dim x model.hidden_size = 8 x 4611686018427387904 x 64 gives the model over 2^50"));

  // Export refuses to overwrite.
  CausalLM model = import(source);
  EXPECT_TRUE(contains(error_message([&] { write_hf_directory(source, hf_named_tensors(model, "float32"), model->config(), {}); }),
                       "already holds config.json"));
}

class RopeScalingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    models_ = new testing::TempDir();
    run_python(*models_, kMakeScaledModels, models_->path());
  }
  static void TearDownTestSuite() {
    delete models_;
    models_ = nullptr;
  }
  static std::string model_dir(const std::string& name) { return models_->file(name); }
  static std::string reference(const std::string& name) { return model_dir(name) + "/reference_logits.safetensors"; }
  static testing::TempDir* models_;
};
testing::TempDir* RopeScalingTest::models_ = nullptr;

TEST_F(RopeScalingTest, EveryScalingGivesTransformersLogitsPastTheOriginalContext) {
  for (const char* name : {"linear", "llama3", "yarn", "yarn_mscale", "yarn_v4_type", "qwen2_yarn"}) {
    CausalLM model = import(model_dir(name));
    EXPECT_NE(model->config().rope_type, "default") << name;
    EXPECT_LE(max_difference(our_logits(model, {long_sequence()}), reference(name)), 1e-4) << name;
  }
  // The test can fail: at these positions the scaling changes the logits.
  CausalLM plain = import(model_dir("plain"));
  EXPECT_GT(max_difference(our_logits(plain, {long_sequence()}), reference("yarn")), 1e-2);
}

TEST_F(RopeScalingTest, ExportWritesTheScalingBackForTransformers) {
  testing::TempDir out;
  for (const char* name : {"llama3", "yarn_mscale", "yarn_v4_type"}) {
    CausalLM model = import(model_dir(name));
    const std::string exported = out.file(name);
    HfExportOptions options;
    options.source_directory = model_dir(name);
    write_hf_directory(exported, hf_named_tensors(model, "float32"), model->config(), options);
    configs::ModelConfig reread = read_hf_config(exported);
    reread.init_from = model->config().init_from;
    EXPECT_EQ(reread, model->config()) << name;
    run_python(out, kLongLogitsOf, exported);
    EXPECT_LE(max_difference(our_logits(model, {long_sequence()}), exported + "/transformers_logits.safetensors"), 1e-4)
        << name;
  }
}

TEST_F(RopeScalingTest, ARunExtendsAPlainModelsContextWithItsOwnScaling) {
  configs::ModelConfig run;
  run.init_from = model_dir("plain");
  run.rope_type = "yarn";
  run.rope_factor = 4.0;
  run.rope_original_max_position_embeddings = 32;
  run.max_position_embeddings = 128;
  const configs::ModelConfig merged = merge_hf_config(run);
  EXPECT_EQ(merged.rope_type, "yarn");
  EXPECT_EQ(merged.max_position_embeddings, 128);
  CausalLM model(merged, ModelStage{}, 0);
  load_hf_weights(model, model_dir("plain"));
  // "yarn" has the same weights and this scaling in its config.json: transformers' logits.
  EXPECT_LE(max_difference(our_logits(model, {long_sequence()}), reference("yarn")), 1e-4);

  // Without a scaling of its own, a run's RoPE keys must agree with config.json.
  configs::ModelConfig stray;
  stray.init_from = model_dir("plain");
  stray.rope_beta_fast = 8.0;
  EXPECT_TRUE(contains(error_message([&] { merge_hf_config(stray); }), "model.rope_beta_fast = 8 in the run config"));
  configs::ModelConfig dynamic = run;
  dynamic.rope_type = "dynamic";
  EXPECT_TRUE(contains(error_message([&] { merge_hf_config(dynamic); }),
                       "model.rope_type must be one of default, linear, llama3, yarn, got \"dynamic\""));
}

}  // namespace
}  // namespace chunkflow::models
