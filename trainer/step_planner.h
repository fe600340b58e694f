// chunkflow-plan's model of a training step: sampled global batches, a cost model of chunk
// forwards and backwards calibrated by timing the real model on this machine, a memory model of
// one rank, and the simulation that turns (chunk_size, resident_chunks) into predicted step time,
// bubble, fill, DP imbalance and peak memory. Reuses the runtime's own pieces: the chunk builder,
// the global batch sampler, DP balancing and the pipeline schedule generator and simulator.
//
// Time of one chunk op on a stage of `layers` decoder layers (tokens t, causal score entries e
// with the K/V prefix counted):
//   forward  = layers x (a_f t + b_f e + c_f) + [last stage] (h_f t + d_f)
//   backward = layers x (a_b t + b_b e + c_b) + [last stage] (h_b t + d_b)
//   recompute + backward = forward + backward
// Step time = max over DP ranks of the simulated pipeline time of its chunk groups (summed over
// the step's global batches) + the optimizer (clip + AdamW, per parameter of the largest stage).
// Memory of a stage = runtime (process before the model) + parameters x model_state_bytes_per_
// parameter (memory_estimate.h: float32 weights, gradients and 2 AdamW moments, the compute copy
// under mixed precision, an all-reduce bucket when dp x cp > 1) + the peak, over the stage's
// schedule, of live chunk activations (per chunk: m_l x layers x t + [last stage] m_h x t + m_0)
// + K/V states of split sequences in flight (exact: pieces x chunk_size rows x
// kv_state_bytes_per_row) + stage inputs kept for recompute (stages after the first).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "configs/config.h"
#include "parallel/data_parallel.h"
#include "parallel/pipeline_schedule.h"

namespace chunkflow::trainer {

// ---- Sequence lengths -------------------------------------------------------------------------
// (Lengths drawn from a published histogram instead of a dataset: data::sample_lengths in
// data/synthetic.h.)

// The sequence lengths of the first `steps` optimizer steps as chunkflow-train samples them
// (data.batch_*, data.shuffle, run.seed, optim.grad_accumulation global batches per step):
// [step][global batch][sequence].
using StepLengths = std::vector<std::vector<std::vector<int64_t>>>;
StepLengths sample_step_lengths(const std::vector<int32_t>& dataset_lengths, const configs::Config& config,
                                int64_t steps);

// ---- Cost and memory model --------------------------------------------------------------------

// Seconds of one chunk forward (or backward) on a stage, see the file comment.
struct OpCost {
  double layer_token = 0;  // a: per decoder layer and token
  double layer_entry = 0;  // b: per decoder layer and causal score entry
  double layer_op = 0;     // c: per decoder layer and op
  double head_token = 0;   // h: embedding, final norm, LM head and loss per token (last stage)
  double head_op = 0;      // d: per op on the last stage
  double seconds(int64_t layers, bool last_stage, double tokens, double attention_entries) const;
};

// What the calibration measured on this machine for one model shape (every field but
// num_hidden_layers: the calibration times depth 1 and 2 models and extrapolates per layer).
struct StepCostModel {
  OpCost forward, backward;
  // Gradient clipping + AdamW step: seconds = optimizer_fixed + optimizer_per_parameter x params.
  double optimizer_fixed = 0, optimizer_per_parameter = 0;
  // Activation bytes of one chunk kept for its backward (peak of a chunk's forward + backward
  // above the resident memory before it): m_l per layer and token, m_h per token on the last
  // stage, m_0 per chunk.
  double activation_per_layer_token = 0, activation_per_head_token = 0, activation_per_chunk = 0;
  double runtime_bytes = 0;  // resident memory of the process before the model exists
  // How it was measured.
  std::string model_shape;  // model_shape_key() of the calibrated model
  int64_t threads = 1;      // torch intra-op threads during the timing
  int64_t observations = 0;
  double fit_relative_rms = 0;  // RMS of (fitted - measured) / measured over the timed runs
  double measured_seconds = 0;
  std::vector<int64_t> chunk_sizes;  // timed chunk sizes

  // Seconds per token and per score entry of a forward + backward over the whole model: the DP
  // balancer's cost model.
  parallel::GroupCostModel group_cost_model(int64_t layers) const;

  std::string to_json() const;
  // Throws core::Error naming `source_name` for malformed JSON or a missing field.
  static StepCostModel from_json(const std::string& text, const std::string& source_name);
};

// The model fields a calibration depends on (all but num_hidden_layers), as one line, e.g.
// "llama vocab 2048 hidden 128 intermediate 352 heads 4 kv_heads 2 head_dim 32 tied 0 bias 0 float32".
std::string model_shape_key(const configs::ModelConfig& model);

struct CalibrationOptions {
  std::vector<int64_t> chunk_sizes;  // timed chunk sizes (each run uses a few chunks of each)
  double seconds = 20;               // time budget for the timed passes (at least one pass runs)
  uint64_t seed = 1;
  bool progress = true;              // core::Progress bar / lines on stderr
};

// Times real chunk forwards and backwards (the trainer's ChunkScheduler on models of depth 1 and 2
// with the configured shape, random tokens) on standalone chunks of one long or many short
// sequences and on two-piece split sequences with resident_chunks 1 and 2, and fits the forward and backward
// OpCost by least squares on relative error with non-negative coefficients; then times the
// optimizer. Memory fields are left for fit_memory_model. Uses torch's current thread count.
StepCostModel calibrate_time(const configs::ModelConfig& model, const CalibrationOptions& options);

// One memory measurement; must run in a fresh process (freed memory stays resident in the
// allocator, so measurements in one process disturb each other): what chunkflow-plan's
// --memory-probe runs.
struct ChunkMemoryProbe {
  int64_t layers = 0;
  int64_t tokens = 0;
  int64_t runtime_bytes = 0;     // resident at the call, before the model
  int64_t chunk_peak_bytes = 0;  // peak above the resident memory before one chunk's forward + backward
  std::string to_json() const;
  static ChunkMemoryProbe from_json(const std::string& text, const std::string& source_name);
};
// Builds the model at depth `layers`, runs a warm-up chunk (gradients allocated), then measures the
// peak resident memory of a forward + backward of one `tokens`-token sequence.
ChunkMemoryProbe probe_chunk_memory(const configs::ModelConfig& model, int64_t layers, int64_t tokens, uint64_t seed);

// Fits the activation coefficients (non-negative least squares) and the runtime (mean of the
// probes) into `costs`. Needs probes at two depths and two token counts.
void fit_memory_model(std::span<const ChunkMemoryProbe> probes, StepCostModel& costs);

// ---- Memory of a stage ------------------------------------------------------------------------

struct MemoryEstimate {
  int64_t runtime_bytes = 0;
  int64_t model_state_bytes = 0;  // parameters, gradients, AdamW moments, all-reduce buckets
  // At the moment of the stage's dynamic peak:
  int64_t activation_bytes = 0;
  int64_t kv_state_bytes = 0;
  int64_t kept_input_bytes = 0;
  int64_t total_bytes() const;
};

// Parameters of pipeline stage `stage` of `stages` (embedding on the first stage, final norm and
// LM head on the last; a tied model's last stage holds the embedding as its head).
int64_t stage_parameter_count(const configs::ModelConfig& model, int stage, int stages, int64_t tp = 1);

// Peak memory of `stage` running `schedule` (pipeline_schedule's ops of that stage) for `plan`.
MemoryEstimate stage_memory(const configs::Config& config, const StepCostModel& costs, const data::ChunkPlan& plan,
                            const std::vector<parallel::PipelineOp>& schedule, int stage);

// ---- Simulation and recommendation ------------------------------------------------------------

struct Candidate {
  int64_t chunk_size = 0;
  int64_t resident_chunks = 1;
};

struct CandidatePrediction {
  Candidate candidate;
  double step_seconds = 0;       // mean over the sampled steps
  std::vector<double> seconds_of_step;  // [steps]: each sampled step's predicted time
  double tokens_per_second = 0;  // real tokens of all steps / their predicted time
  double bubble_ratio = 0;       // pipeline idle share of the slowest DP rank, mean over batches
  double fill_ratio = 0;         // real tokens / (chunks x chunk_size), over all batches
  double dp_imbalance = 1;       // max / mean cost over DP ranks, mean over batches
  double recompute_share = 0;    // recomputed chunk forwards / chunks
  int64_t chunks = 0;            // over all sampled batches
  MemoryEstimate peak_memory;    // the worst stage's, worst batch
  bool within_budget = true;
};

// Predicts one candidate on the sampled steps (config's model, parallel and data sections;
// chunking.chunk_size and resident_chunks replaced by the candidate).
CandidatePrediction predict_candidate(const configs::Config& config, const StepLengths& steps,
                                      const StepCostModel& costs, const Candidate& candidate);

// Index of the recommendation: the fastest candidate within budget, where predicted step times
// within `tie_tolerance` (relative) of the fastest count as equal and the least memory wins among
// them. -1 when none fits. Sets within_budget on every prediction (budget <= 0: no limit).
int recommend(std::vector<CandidatePrediction>& predictions, int64_t memory_budget_bytes,
              double tie_tolerance = 0.01);

// Default chunk sizes: powers of two from 128 up to the first one that holds the longest
// sequence, at most `max_count` of them (the largest kept).
std::vector<int64_t> default_chunk_sizes(int64_t longest_sequence, int max_count = 8);

// "512", "64K", "1.5M", "2G" (binary multiples) -> bytes. Throws core::Error naming `what`.
int64_t parse_byte_size(const std::string& text, const std::string& what);

}  // namespace chunkflow::trainer
