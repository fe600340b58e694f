// Chunked and reference training steps for the exactness tests; see chunked_step.h.
#include "tests/support/chunked_step.h"

#include <algorithm>
#include <random>

#include "data/chunk_inputs.h"
#include "data/chunk_plan.h"
#include "models/chunk_batch.h"
#include "trainer/chunk_scheduler.h"
#include "trainer/trainer.h"

namespace chunkflow::testing {

StepGradients chunked_step(models::CausalLM& model, const std::vector<ReferenceSequence>& batch,
                           const configs::ChunkingConfig& chunking, int64_t resident_chunks) {
  std::vector<data::PlanSequence> sequences;
  for (const auto& sequence : batch) sequences.push_back({static_cast<int64_t>(sequence.tokens.size()), sequence.loss_mask});
  const data::ChunkPlan plan = trainer::build_step_plan(chunking, sequences);
  const data::TokenReader reader = [&](int32_t sequence, int64_t begin, int64_t count, int32_t* out) {
    for (int64_t i = 0; i < count; ++i) {
      out[i] = static_cast<int32_t>(batch[static_cast<size_t>(sequence)].tokens[static_cast<size_t>(begin + i)]);
    }
  };
  const torch::Device device = model->parameters().front().device();
  const trainer::ChunkBatchSource source = [&](int32_t chunk) {
    return models::make_chunk_batch(data::gather_chunk_inputs(plan, chunk, sequences, reader), device);
  };
  model->zero_grad();
  trainer::ChunkScheduler scheduler(model, resident_chunks);
  const trainer::LossTotals totals = scheduler.run_plan(plan, source, 1.0 / static_cast<double>(plan.loss_tokens()));
  StepGradients result;
  result.loss = totals.loss_sum / static_cast<double>(totals.loss_tokens);
  for (const auto& parameter : model->parameters()) result.gradients.push_back(parameter.grad().to(torch::kCPU, torch::kDouble));
  return result;
}

StepGradients float64_reference_step(models::CausalLM& model, const std::vector<ReferenceSequence>& batch) {
  torch::OrderedDict<std::string, torch::Tensor> exact;
  for (const auto& item : model->named_parameters()) {
    exact.insert(item.key(), item.value().detach().to(torch::kCPU, torch::kDouble).requires_grad_(true));
  }
  configs::ModelConfig config = model->config();
  config.dtype = "float32";  // the reference computes in its weights' dtype, float64
  const torch::Tensor loss = reference_mean_loss(exact, config, batch);
  loss.backward();
  StepGradients result;
  result.loss = loss.item<double>();
  for (const auto& item : exact) result.gradients.push_back(item.value().grad());
  return result;
}

ThreeWays chunked_unchunked_and_reference(models::CausalLM& model, const std::vector<ReferenceSequence>& batch,
                                          int64_t chunk_size, int64_t resident_chunks) {
  configs::ChunkingConfig chunked;
  chunked.chunk_size = chunk_size;
  configs::ChunkingConfig whole;
  whole.strategy = "pad_to_longest";
  whole.micro_batch_sequences = 1;
  ThreeWays result;
  result.chunked = chunked_step(model, batch, chunked, resident_chunks);
  result.unchunked = chunked_step(model, batch, whole, 1);
  result.reference = float64_reference_step(model, batch);
  return result;
}

double relative_norm_error(const torch::Tensor& got, const torch::Tensor& want) {
  const double scale = std::max(want.norm().item<double>(), 1e-30);
  return (got.to(torch::kDouble) - want.to(torch::kDouble)).norm().item<double>() / scale;
}

std::vector<ReferenceSequence> random_sequences(uint64_t seed, size_t count, int64_t chunk_size, int64_t vocab) {
  std::mt19937_64 rng(seed);
  std::vector<ReferenceSequence> batch(count);
  for (auto& sequence : batch) {
    const int64_t longest = rng() % 2 ? 4 * chunk_size : chunk_size;
    const int64_t length = 2 + static_cast<int64_t>(rng() % static_cast<uint64_t>(longest));
    for (int64_t t = 0; t < length; ++t) sequence.tokens.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(vocab)));
  }
  return batch;
}

}  // namespace chunkflow::testing
