// Peak memory of one training step on a single long sequence, chunked (issue 3's memory
// evidence). One process per measurement: peak resident memory is a per-process figure.
//   memory_bench --length 65536 [--chunk-size 2048] [--resident-chunks 1] [--recompute-layers]
// --chunk-size equal to the length with --recompute-layers is the pack-to-max-length baseline with
// full activation recomputation (chunking.recompute_layers).
// Prints one JSON line: baseline (after model set-up), step peak above baseline, the largest K/V
// state held (store + gradient accumulators) and that state predicted by the design formula.
#include <cstdio>

#include "core/command_line.h"
#include "core/error.h"
#include "core/random.h"
#include "data/chunk_inputs.h"
#include "data/chunk_plan.h"
#include "models/chunk_batch.h"
#include "models/transformer.h"
#include "trainer/chunk_scheduler.h"
#include "trainer/memory_stats.h"

int main(int argc, char** argv) {
  using namespace chunkflow;
  int64_t length = 65536, chunk_size = 2048, resident_chunks = 1;
  bool recompute_layers = false;
  core::CommandLine command_line("memory_bench", "Peak memory of one chunked training step on one sequence.");
  command_line.add_int("length", &length, "sequence length in tokens");
  command_line.add_int("chunk-size", &chunk_size, "chunk size");
  command_line.add_int("resident-chunks", &resident_chunks, "chunks that keep activations");
  command_line.add_flag("recompute-layers", &recompute_layers,
                        "standalone chunks keep only each layer's input and recompute it in backward");
  try {
    if (!command_line.parse(std::vector<std::string>(argv + 1, argv + argc))) return 0;
    configs::ModelConfig config;
    config.vocab_size = 2048;
    config.hidden_size = 128;
    config.intermediate_size = 352;
    config.num_hidden_layers = 2;
    config.num_attention_heads = 4;
    config.num_key_value_heads = 2;
    torch::manual_seed(1);
    models::CausalLM model(config);

    core::Rng rng(2);
    std::vector<int32_t> tokens(static_cast<size_t>(length));
    for (auto& token : tokens) token = static_cast<int32_t>(rng.below(static_cast<uint64_t>(config.vocab_size)));
    const std::vector<data::PlanSequence> sequences = {{length, {}}};
    const data::ChunkPlan plan = data::build_chunk_plan(sequences, chunk_size);
    const data::TokenReader reader = [&](int32_t, int64_t begin, int64_t count, int32_t* out) {
      std::copy_n(tokens.begin() + begin, count, out);
    };
    const trainer::ChunkBatchSource source = [&](int32_t chunk) {
      return models::make_chunk_batch(data::gather_chunk_inputs(plan, chunk, sequences, reader), torch::kCPU);
    };
    trainer::ChunkScheduler scheduler(model, resident_chunks, trainer::PipelineStage{}, recompute_layers);
    const int64_t baseline = trainer::read_memory_stats().current_rss_bytes;
    const bool reset = trainer::reset_peak_rss();
    const trainer::LossTotals totals = scheduler.run_plan(plan, source, 1.0 / static_cast<double>(plan.loss_tokens()));
    const int64_t peak = trainer::read_memory_stats().peak_rss_bytes;
    // Design brief section 4: L x layers x 2 (K and V) x kv_heads x head_dim x bytes, with L the
    // rows of the state buffer (every piece, rounded up to whole chunks), doubled for the gradient
    // accumulators.
    const int64_t state_tokens = static_cast<int64_t>(plan.chunks().size()) * chunk_size;
    const int64_t formula = state_tokens * config.num_hidden_layers * 2 * config.num_key_value_heads *
                            config.effective_head_dim() * 4 * 2;
    std::printf("{\"length\": %lld, \"chunk_size\": %lld, \"resident_chunks\": %lld, \"recompute_layers\": %s, "
                "\"chunks\": %zu, "
                "\"baseline_bytes\": %lld, \"step_peak_above_baseline_bytes\": %lld, \"kv_state_bytes\": %lld, "
                "\"kv_state_formula_bytes\": %lld, \"peak_reset\": %s, \"loss\": %.6f}\n",
                static_cast<long long>(length), static_cast<long long>(chunk_size),
                static_cast<long long>(resident_chunks), recompute_layers ? "true" : "false", plan.chunks().size(),
                static_cast<long long>(baseline),
                static_cast<long long>(peak - baseline), static_cast<long long>(totals.peak_state_bytes),
                static_cast<long long>(formula), reset ? "true" : "false",
                totals.loss_sum / static_cast<double>(totals.loss_tokens));
    return 0;
  } catch (const core::Error& error) {
    std::fprintf(stderr, "memory_bench: %s\n", error.what());
    return 1;
  }
}
