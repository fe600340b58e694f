// The memory estimate's exact parts against the real objects (a built model stage's parameters,
// KVStateStore's own bytes, /proc/meminfo through sysconf), how the activation part follows the
// chunking keys, and the fit check's error and warning.
#include "trainer/memory_estimate.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <string>

#include "core/error.h"
#include "models/transformer.h"
#include "tests/support/expect_error.h"
#include "trainer/kv_state_store.h"

namespace chunkflow::trainer {
namespace {

using chunkflow::testing::contains;
using chunkflow::testing::error_message;

configs::Config small_config() {
  configs::Config config;
  config.model.vocab_size = 97;
  config.model.hidden_size = 64;
  config.model.intermediate_size = 96;
  config.model.num_hidden_layers = 5;
  config.model.num_attention_heads = 4;
  config.model.num_key_value_heads = 2;
  config.chunking.chunk_size = 128;
  return config;
}

TEST(MemoryEstimateTest, ModelStateCountsEveryParameterOfTheStage) {
  for (const std::string dtype : {"float32", "bfloat16"}) {
    for (const int stages : {1, 2}) {
      for (int stage = 0; stage < stages; ++stage) {
        configs::Config config = small_config();
        config.model.dtype = dtype;
        config.model.tie_word_embeddings = stages == 2;
        config.parallel.pp = stages;
        const models::CausalLM model(config.model, models::pipeline_stage(config.model, stage, stages), 0);
        int64_t parameters = 0;
        for (const auto& parameter : model->parameters()) parameters += parameter.numel();
        const RankMemoryEstimate estimate = estimate_rank_memory(config, stage, 100);
        EXPECT_EQ(estimate.parameters, parameters) << dtype << " stage " << stage << "/" << stages;
        // fp32 master + fp32 gradient + two fp32 moments (+ the bf16 compute copy).
        EXPECT_EQ(estimate.model_state_bytes, parameters * (dtype == "bfloat16" ? 18 : 16)) << dtype;
      }
    }
  }
  configs::Config data_parallel = small_config();
  data_parallel.parallel.dp = 2;
  EXPECT_EQ(estimate_rank_memory(data_parallel, 0, 100).model_state_bytes,
            estimate_rank_memory(small_config(), 0, 100).parameters * 20)
      << "the flat all-reduce buckets";
  configs::Config sharded = data_parallel;
  sharded.parallel.shard_optimizer = true;
  sharded.parallel.cp = 2;
  // 4 master + 4 gradient + (8 moments + 4 master slice + 4 gradient slice) / 4 ranks.
  EXPECT_EQ(estimate_rank_memory(sharded, 0, 100).model_state_bytes,
            estimate_rank_memory(small_config(), 0, 100).parameters * 12)
      << "parallel.shard_optimizer over dp x cp = 4 ranks";
}

TEST(MemoryEstimateTest, LayoutTableListsEveryLayoutTheRulesAllowWithItsFullestRank) {
  configs::Config config = small_config();
  config.data.path = "data/any";  // validate() needs one; the table never reads it
  config.model.vocab_size = 96;   // tp = 2 divides everything; tp = 4 not the 2 K/V heads
  const std::vector<LayoutMemory> table = layout_memory_table(config, 8, 1000);
  int sharded = 0, tensor_parallel = 0;
  for (size_t i = 0; i < table.size(); ++i) {
    const configs::ParallelConfig& p = table[i].parallel;
    EXPECT_EQ(p.world_size(), 8);
    EXPECT_LE(p.pp, config.model.num_hidden_layers);
    EXPECT_LE(p.tp, 2) << "tp must divide num_key_value_heads = 2";
    EXPECT_TRUE(!p.shard_optimizer || p.dp * p.cp > 1) << "nothing to shard over one rank";
    if (i > 0) {
      EXPECT_LE(table[i - 1].worst.total_bytes(), table[i].worst.total_bytes()) << "smallest first";
    }
    // The fullest stage's estimate, as the trainer computes it on that stage.
    configs::Config layout = config;
    layout.parallel = p;
    for (int stage = 0; stage < static_cast<int>(p.pp); ++stage) {
      EXPECT_LE(estimate_rank_memory(layout, stage, 1000).total_bytes(), table[i].worst.total_bytes());
    }
    EXPECT_EQ(estimate_rank_memory(layout, table[i].worst_stage, 1000).total_bytes(), table[i].worst.total_bytes());
    sharded += p.shard_optimizer ? 1 : 0;
    tensor_parallel += p.tp > 1 ? 1 : 0;
  }
  // 8 = dp x cp x pp x tp with pp in {1, 2, 4} (5 layers; pp = 8 is too many) and tp in {1, 2}.
  EXPECT_GT(sharded, 0);
  EXPECT_GT(tensor_parallel, 0);
  const auto find = [&](int64_t dp, int64_t tp, bool shard) {
    for (const auto& entry : table) {
      if (entry.parallel.dp == dp && entry.parallel.tp == tp && entry.parallel.shard_optimizer == shard &&
          entry.parallel.pp == 1) {
        return entry.worst;
      }
    }
    ADD_FAILURE() << "no layout dp " << dp << " tp " << tp << " sharded " << shard;
    return RankMemoryEstimate{};
  };
  EXPECT_LT(find(8, 1, true).model_state_bytes, find(8, 1, false).model_state_bytes);
  EXPECT_LT(find(4, 2, false).model_state_bytes, find(8, 1, false).model_state_bytes);
  EXPECT_THROW(layout_memory_table(config, 0, 1000), core::Error);
}

TEST(MemoryEstimateTest, KVStateIsWhatTheStoreAllocatesForTheLongestSequence) {
  for (const std::string dtype : {"float32", "bfloat16"}) {
    configs::Config config = small_config();
    config.model.dtype = dtype;
    const auto compute = dtype == "bfloat16" ? torch::kBFloat16 : torch::kFloat;
    // 300 tokens in 128-token chunks: 3 pieces, 384 rows.
    const KVStateStore store(5, 384, 2, 16, torch::TensorOptions().dtype(compute), torch::TensorOptions().dtype(torch::kFloat));
    EXPECT_EQ(estimate_rank_memory(config, 0, 300).kv_state_bytes, store.bytes()) << dtype;
  }
  EXPECT_EQ(estimate_rank_memory(small_config(), 0, 128).kv_state_bytes, 0) << "one chunk: no state";
  configs::Config baseline = small_config();
  baseline.chunking.strategy = "pack_to_max";
  baseline.chunking.chunk_size = 512;
  EXPECT_EQ(estimate_rank_memory(baseline, 0, 300).kv_state_bytes, 0) << "pack_to_max never splits";
}

TEST(MemoryEstimateTest, ActivationsFollowTheChunkingKeys) {
  const configs::Config config = small_config();
  const RankMemoryEstimate one = estimate_rank_memory(config, 0, 1000);
  const int64_t per_token = 5 * activation_bytes_per_layer_token(config.model) +
                            activation_bytes_per_head_token(config.model);
  EXPECT_EQ(one.chunks_in_flight, 1);
  EXPECT_EQ(one.activation_bytes, 128 * per_token);
  configs::Config resident = config;
  resident.chunking.resident_chunks = 3;
  EXPECT_EQ(estimate_rank_memory(resident, 0, 1000).activation_bytes, 3 * one.activation_bytes);
  configs::Config context = config;
  context.parallel.cp = 2;
  EXPECT_EQ(estimate_rank_memory(context, 0, 1000).activation_bytes, one.activation_bytes / 2);
  configs::Config pipeline = config;
  pipeline.parallel.pp = 2;  // 1F1B: the first stage warms up with 2 chunks, the last with 1
  EXPECT_EQ(estimate_rank_memory(pipeline, 0, 1000).chunks_in_flight, 2);
  EXPECT_EQ(estimate_rank_memory(pipeline, 1, 1000).chunks_in_flight, 1);
  configs::Config padded = config;
  padded.chunking.strategy = "pad_to_longest";
  padded.chunking.micro_batch_sequences = 2;
  EXPECT_EQ(estimate_rank_memory(padded, 0, 1000).activation_bytes, 2 * 1000 * per_token);
}

TEST(MemoryEstimateTest, HostMemoryComesFromProcMeminfo) {
  const DeviceMemory memory = read_device_memory(torch::kCPU);
  const double physical = static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * static_cast<double>(::sysconf(_SC_PAGESIZE));
  EXPECT_NEAR(static_cast<double>(memory.total_bytes), physical, 0.01 * physical);
  EXPECT_GT(memory.available_bytes, 0);
  EXPECT_LE(memory.available_bytes, memory.total_bytes);
  EXPECT_TRUE(contains(memory.source, "/proc/meminfo"));
}

TEST(MemoryEstimateTest, ARankThatCannotHoldItsModelIsAnErrorAndATightOneAWarning) {
  const configs::Config config = small_config();
  const RankMemoryEstimate estimate = estimate_rank_memory(config, 0, 1000);
  const DeviceMemory tiny{estimate.model_state_bytes - 1, estimate.model_state_bytes - 1, "cuda:0"};
  const std::string error = error_message([&] { check_memory_estimate(estimate, tiny, config); });
  EXPECT_TRUE(contains(error, "the model cannot fit: " + std::to_string(estimate.parameters) + " parameters"));
  EXPECT_TRUE(contains(error, "(parallel.pp = 1)"));
  const DeviceMemory tight{estimate.total_bytes() * 4, estimate.total_bytes() - 1, "cuda:0"};
  EXPECT_TRUE(contains(check_memory_estimate(estimate, tight, config), "lower chunking.chunk_size (128)"));
  const DeviceMemory ample{estimate.total_bytes() * 4, estimate.total_bytes() * 2, "host RAM"};
  EXPECT_EQ(check_memory_estimate(estimate, ample, config), "");
  EXPECT_TRUE(contains(check_memory_estimate(estimate, ample, config, 3), "x 3 ranks sharing it exceeds"));
  EXPECT_TRUE(contains(describe_memory_estimate(estimate, ample, 1000), "longest sequence 1000 tokens"));
}

}  // namespace
}  // namespace chunkflow::trainer
