// One training step's loss and parameter gradients under a chunking strategy, run by the
// state-aware scheduler on any device, and the float64 whole-sequence reference of the same step:
// what the exactness tests of mixed precision and of the GPU path compare.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "configs/chunking_config.h"
#include "models/transformer.h"
#include "tests/support/reference_model.h"

namespace chunkflow::testing {

struct StepGradients {
  double loss = 0;                       // mean cross-entropy over the step's loss tokens
  std::vector<torch::Tensor> gradients;  // per parameter (named_parameters() order), float64 on the CPU
};

// Runs forward + backward of `batch` through ChunkScheduler on the model's device (chunk inputs
// are built there); the model keeps the gradients in .grad as well.
StepGradients chunked_step(models::CausalLM& model, const std::vector<ReferenceSequence>& batch,
                           const configs::ChunkingConfig& chunking, int64_t resident_chunks);

// The same step by testing::reference_mean_loss in float64 on float64 copies of the model's weights.
StepGradients float64_reference_step(models::CausalLM& model, const std::vector<ReferenceSequence>& batch);

// One step three ways on the same weights: chunked (chunk_size, resident_chunks, ChunkFlow's
// plan), unchunked (every sequence whole in a chunk of its own: plain training in the model's
// precision) and the float64 reference — what FlashAttention's rule compares.
struct ThreeWays {
  StepGradients chunked, unchunked, reference;
};
ThreeWays chunked_unchunked_and_reference(models::CausalLM& model, const std::vector<ReferenceSequence>& batch,
                                          int64_t chunk_size, int64_t resident_chunks);

// |got - want| / |want| over the whole tensor (Frobenius norms), want != 0.
double relative_norm_error(const torch::Tensor& got, const torch::Tensor& want);

// `count` random sequences: lengths up to 4 x chunk_size for about half of them, else up to
// chunk_size; token ids below `vocab`.
std::vector<ReferenceSequence> random_sequences(uint64_t seed, size_t count, int64_t chunk_size, int64_t vocab);

}  // namespace chunkflow::testing
