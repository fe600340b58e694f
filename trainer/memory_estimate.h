// Before the first step: one rank's peak memory, estimated from the config and the dataset's
// longest sequence, next to what the device has. The parts that depend only on the model are
// exact; activations are an analytic count of the tensors autograd keeps (a lower bound: the
// allocator's fragmentation, the runtime itself and transient workspaces come on top).
//
//   model state  parameters of this rank's pipeline stage x (4 float32 master weights + 4 float32
//                gradients + 8 AdamW moments + 2 bfloat16 compute copy under mixed precision
//                + 4 flat all-reduce bucket when dp x cp > 1); with parallel.shard_optimizer
//                4 + 4 (+ 2) + 16 / (dp x cp): moments, master slice and gradient slice sharded
//                (+ one flat bucket of parallel.gradient_bucket_mb while reduce-scattering)
//   K/V state    the longest sequence split into chunks (chunkflow strategy): rows rounded up to
//                whole chunks x stage layers x 2 (K, V) x kv_heads x head_dim x (compute bytes for
//                the state + 4 for its float32 gradient accumulators)
//   activations  chunks in flight (max(resident_chunks, 1F1B warm-up pp - stage)) x their tokens
//                (chunk_size; pad_to_longest: micro_batch_sequences x the longest sequence) x
//                (stage layers x bytes per layer-token + [last stage] bytes per head-token)
// Bytes per layer-token: compute bytes x (4 hidden + 2 q width + 2 kv width + 3 intermediate)
// (the norms' inputs and outputs, q, own K/V, attention output, gate, up and their product) +
// float32 x (query heads + 2) (log-sum-exp and the norms' rstd); per head-token: 2 hidden + 4.
// Under tensor parallelism (parallel.tp) a rank holds 1/tp of the split parameters (projections,
// embeddings; norms stay whole), of the K/V heads and of the q, K/V, attention and MLP widths. Of
// the 4 hidden-sized tensors per layer-token, sequence parallelism splits the two norm inputs
// (the residual stream) by rows; the two norm outputs are kept gathered (whole) by the
// projections that read them.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "configs/config.h"

namespace chunkflow::trainer {

struct RankMemoryEstimate {
  int64_t parameters = 0;  // of this rank's stage
  int64_t model_state_bytes = 0;
  int64_t kv_state_bytes = 0;
  int64_t activation_bytes = 0;
  int64_t chunks_in_flight = 0;
  int64_t total_bytes() const { return model_state_bytes + kv_state_bytes + activation_bytes; }
};

// The estimate for pipeline stage `stage` of config.parallel.pp with `longest_sequence` tokens
// as the longest sequence the run can draw. config.model must be final (after merge_hf_config).
RankMemoryEstimate estimate_rank_memory(const configs::Config& config, int stage, int64_t longest_sequence);

// One parallel layout and the estimate of its fullest rank (the pipeline stage with the largest
// total: the first holds the embedding, the last the LM head and loss).
struct LayoutMemory {
  configs::ParallelConfig parallel;
  RankMemoryEstimate worst;
  int worst_stage = 0;
};

// Every dp x cp x pp x tp layout of exactly `ranks` ranks that the config's rules allow (pp <=
// layers, tp dividing heads, K/V heads, MLP and vocabulary, ...; rejected layouts are left out),
// each with replicated AdamW and, where dp x cp > 1, with parallel.shard_optimizer; the rest of
// `config` (model, chunking, order, ...) as given. Ordered by the fullest rank's total, smallest
// first. What chunkflow-plan --layouts prints: which layouts fit a memory budget.
std::vector<LayoutMemory> layout_memory_table(const configs::Config& config, int64_t ranks, int64_t longest_sequence);

// Bytes per parameter alive for the whole run, and of one K/V state row over `layers` layers
// (K and V in the compute dtype + their float32 gradient accumulators): the model-state and K/V
// terms above, shared with chunkflow-plan's memory model (step_planner.h).
double model_state_bytes_per_parameter(const configs::Config& config);
// Bytes of one element of model.dtype (the compute dtype): 2 for bfloat16 and float16, 4 for float32.
int64_t compute_bytes(const configs::ModelConfig& model);
int64_t kv_state_bytes_per_row(const configs::ModelConfig& model, int64_t layers, int64_t tp = 1);

// Bytes one decoder layer keeps per token for its backward, and the final norm + LM head + loss
// per token (see the file comment).
int64_t activation_bytes_per_layer_token(const configs::ModelConfig& model, int64_t tp = 1,
                                          bool sequence_parallel = false);
int64_t activation_bytes_per_head_token(const configs::ModelConfig& model);

struct DeviceMemory {
  int64_t total_bytes = 0;
  int64_t available_bytes = 0;  // free now (CUDA: cudaMemGetInfo; CPU: MemAvailable)
  std::string source;           // where the numbers came from, for the log line
};

// CUDA: the device's total and free memory; CPU: /proc/meminfo's MemTotal and MemAvailable
// (shared by every rank of the machine). Throws core::Error naming the source when unreadable.
DeviceMemory read_device_memory(const torch::Device& device);

// One log line: "memory estimate per rank: model state 1.2 GiB (...) + K/V state ... = ...;
// device has ... (... available)".
std::string describe_memory_estimate(const RankMemoryEstimate& estimate, const DeviceMemory& device,
                                     int64_t longest_sequence);

// Throws core::Error when the exact part (model state) of the `ranks_sharing` ranks that share
// the device (CPU: this machine's ranks; a GPU: 1) alone exceeds its total memory, naming the
// parameters, the keys that change it (parallel.pp, model.dtype) and the numbers. Returns a
// warning text ("" when none) when their whole estimate exceeds the available memory, naming
// chunking.chunk_size and chunking.resident_chunks.
std::string check_memory_estimate(const RankMemoryEstimate& estimate, const DeviceMemory& device,
                                  const configs::Config& config, int ranks_sharing = 1);

}  // namespace chunkflow::trainer
