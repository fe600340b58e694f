// Chunk-plan construction speed on long-tail batches (target: 1,000,000 sequences in under a
// second on one core). Lengths come from the synthetic long-tail generator at scale 1.
#include <benchmark/benchmark.h>

#include <vector>

#include "data/chunk_plan.h"
#include "data/synthetic.h"

namespace {

std::vector<chunkflow::data::PlanSequence> long_tail_batch(int64_t sequences) {
  chunkflow::data::SynthOptions options;
  options.sequences = sequences;
  options.max_length = 262144;
  std::vector<chunkflow::data::PlanSequence> batch;
  for (const int64_t length : chunkflow::data::sample_longtail_lengths(options)) batch.push_back({length, {}});
  return batch;
}

void BM_BuildChunkPlan(benchmark::State& state) {
  const auto batch = long_tail_batch(state.range(0));
  const int64_t chunk_size = state.range(1);
  int64_t chunks = 0;
  for (auto _ : state) {
    const auto plan = chunkflow::data::build_chunk_plan(batch, chunk_size);
    chunks = static_cast<int64_t>(plan.chunks().size());
    benchmark::DoNotOptimize(chunks);
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
  state.counters["chunks"] = static_cast<double>(chunks);
}

BENCHMARK(BM_BuildChunkPlan)
    ->Args({1000, 4096})
    ->Args({100000, 4096})
    ->Args({1000000, 4096})
    ->Args({1000000, 32768})
    ->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
