// The training loop: global batches from the sampler, a chunk plan per batch, the state-aware
// scheduler for forward/backward, then gradient clipping and an AdamW step. Reports loss (all
// tokens and far tokens), learning rate, grad norm, tokens/s, TFLOP/s and peak memory per step
// to the log, a progress bar, metrics.jsonl and TensorBoard.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "configs/config.h"
#include "data/chunk_plan.h"
#include "data/indexed_dataset.h"
#include "data/sampler.h"
#include "models/transformer.h"
#include "parallel/communicator.h"
#include "parallel/data_parallel.h"
#include "parallel/device_mesh.h"
#include "parallel/sharded_optimizer.h"
#include "trainer/chunk_scheduler.h"

namespace chunkflow::trainer {

struct StepMetrics {
  int64_t step = 0;                  // 1-based
  double loss = 0;                   // mean cross-entropy over the step's loss tokens
  double far_loss = 0;               // mean over far tokens (target beyond the first chunk); NaN if none
  double learning_rate = 0;
  double grad_norm = 0;              // global L2 norm before clipping
  double seconds = 0;
  double tokens_per_second = 0;      // real tokens only
  double tflops = 0;                 // model TFLOP/s (flops.h convention; recompute not counted)
  int64_t tokens = 0, loss_tokens = 0, far_tokens = 0;
  int64_t sequences = 0, chunks = 0, recomputed_chunks = 0;
  int64_t peak_rss_bytes = 0;        // process peak resident memory so far
  // CUDA runs: the most GPU memory LibTorch's caching allocator held allocated during the step
  // (max over ranks), and model FLOPs utilisation: tflops / (run.peak_tflops x ranks). 0 / NaN on
  // the CPU.
  int64_t peak_device_memory_bytes = 0;
  double mfu = NAN;
  int64_t peak_kv_state_bytes = 0;   // largest K/V state + accumulators held during the step
  int64_t overlapped_buckets = 0;    // gradient buckets whose all-reduce started during the backward
  double dp_imbalance = 1.0;         // max / mean chunk-group cost over DP ranks (worst batch)
  // Pipeline parallelism: idle share of the stages' time, measured (1 - busy / (ranks x wall))
  // and predicted by the schedule simulator from the cost model. NaN without a pipeline.
  double pipeline_bubble = NAN;
  double pipeline_bubble_simulated = NAN;
  // The DP cost model used for this step's balancing: seconds per token and per causal score
  // entry, calibrated from earlier steps' measured compute times (parallel::CostCalibration).
  double cost_per_token = NAN, cost_per_attention_entry = NAN;
  // A step whose loss or gradient norm was NaN/Inf is skipped: no parameter update
  // (optim.max_skipped_steps in a row stop the run). skipped_steps counts them over the run.
  bool skipped = false;
  int64_t skipped_steps = 0;

  std::string to_json() const;
};

// The chunk plan of one global batch under chunking.strategy: "chunkflow" (build_chunk_plan
// with chunk_size and pack_into_tail), "pack_to_max" (whole sequences packed into chunk_size,
// never split: throws core::Error naming a longer sequence) or "pad_to_longest"
// (build_padded_plan with micro_batch_sequences).
data::ChunkPlan build_step_plan(const configs::ChunkingConfig& chunking, std::span<const data::PlanSequence> sequences);

// Parameters that take weight decay: matrices (projections, embeddings); never norms or biases.
bool takes_weight_decay(const std::string& parameter_name, const torch::Tensor& parameter);

// AdamW with decoupled weight decay, two parameter groups (decay / no decay); FusedAdamW when
// optim.fused (fused_adamw.h), else LibTorch's per-tensor torch::optim::AdamW.
std::unique_ptr<torch::optim::AdamW> make_optimizer(models::CausalLM& model, const configs::OptimConfig& optim);
// The two parts of make_optimizer: the model's parameter groups with their options, and the
// AdamW (fused or not) over given groups (the sharded optimizer's slices, parallel.shard_optimizer).
std::vector<torch::optim::OptimizerParamGroup> optimizer_groups(models::CausalLM& model,
                                                                 const configs::OptimConfig& optim);
std::unique_ptr<torch::optim::AdamW> make_adamw(std::vector<torch::optim::OptimizerParamGroup> groups,
                                                const configs::OptimConfig& optim);

// Global L2 norm of all gradients; clips them to max_norm when max_norm > 0. Returns the norm
// before clipping. Under pipeline parallelism `pipeline_group` sums the squares over the stages
// (a tied embedding held by the last stage too is counted once, on the first); under tensor
// parallelism `tensor_group` sums them over the tp ranks (parameters every tp rank holds whole are
// counted once, on the first).
double clip_gradients(models::CausalLM& model, double max_norm, parallel::Communicator* pipeline_group = nullptr,
                      parallel::Communicator* tensor_group = nullptr);
// The same under parallel.shard_optimizer, from the reduce-scattered gradient slices: their squares
// are summed over the stage's ranks, the tp ranks and the pipeline. Collective over
// mesh.stage_group(), mesh.tp_group() and mesh.pp_group().
double clip_sharded_gradients(parallel::ShardedAdamW& optimizer, models::CausalLM& model, double max_norm,
                              parallel::DeviceMesh& mesh);

// After every rank of `mesh` ran its share of a step's backward: sums the gradients of the
// stage's parameters over the dp and cp groups (partial sums over different chunk groups and
// different rows of the same chunks) and, for a tied embedding split over pipeline stages, adds
// the first and last stages' gradients on both. Collective over the mesh.
// `reducer` (over mesh.stage_group(), possibly armed during the last backward) finishes the dp x
// cp sum when given; otherwise it is a blocking bucketed all-reduce. With `sharded`
// (parallel.shard_optimizer) the sums are reduce-scattered into its slices instead (the tied
// embedding's partial sums added first); the parameters' .grad then stay this rank's partial sums.
void reduce_gradients(models::CausalLM& model, parallel::DeviceMesh& mesh, parallel::GradientReducer* reducer = nullptr,
                      parallel::ShardedAdamW* sharded = nullptr);

class Trainer {
 public:
  // Opens the dataset (and loss mask), builds the model from run.seed, the sampler and optimizer.
  // With a `world` of dp x cp x pp ranks (parallel.*): every rank computes the same plans; each
  // DP rank runs its share of the chunk groups (balanced by cost), each CP rank its rows of every
  // chunk, each pipeline stage its layers; gradients are all-reduced over dp and cp. Outputs are
  // written by rank 0 (the last pipeline stage's losses reach it by all-reduce).
  // Throws core::Error for unusable config (naming the key) or data.
  explicit Trainer(configs::Config config, parallel::Communicator* world = nullptr);
  ~Trainer();

  // Runs the remaining optimizer steps up to run.steps; creates the run directory with the
  // resolved config, metrics.jsonl and TensorBoard events.
  std::vector<StepMetrics> train();
  // One optimizer step (run.grad_accumulation global batches).
  StepMetrics train_step();

  models::CausalLM& model() { return model_; }
  // The device this rank trains on (run.device resolved).
  const torch::Device& device() const { return device_; }
  const configs::Config& config() const { return config_; }
  int64_t steps_done() const { return steps_done_; }
  // The checkpoint the run resumed from ("" for a fresh start).
  const std::string& resumed_from() const { return resumed_from_; }
  // Saves a checkpoint of the current step (collective over the world); train() calls it every
  // checkpoint.interval steps and after the last step.
  void save_checkpoint_now();

 private:
  struct PlannedBatch;
  struct StepWork;
  // train_step's parts, in order.
  std::vector<PlannedBatch> plan_step(StepMetrics& metrics, StepWork& work);
  void run_step(std::vector<PlannedBatch>& planned, StepMetrics& metrics, StepWork& work);
  void reduce_step(StepMetrics& metrics, StepWork& work);
  void apply_update(const std::vector<PlannedBatch>& planned, StepMetrics& metrics, const LossTotals& totals);
  void finish_metrics(StepMetrics& metrics, const StepWork& work, std::chrono::steady_clock::time_point start);
  std::vector<int32_t> groups_of_this_rank(const data::ChunkPlan& plan, StepMetrics& metrics, StepWork& work);
  ChunkBatchSource chunk_source(const PlannedBatch& entry);
  std::string describe_non_finite_step(const std::vector<PlannedBatch>& planned, const LossTotals& totals,
                                       double grad_norm);
  void build_model(const models::ModelStage& stage);

  void claim_run_folder();
  void check_token_ids();
  void open_loss_mask();
  std::string describe_token_outside_vocabulary(int64_t id, int64_t position, int64_t sequence) const;
  // train_step, or under the Kineto profiler when it is logging.profile_step.
  StepMetrics next_step();
  StepMetrics profiled_step();
  void report(const StepMetrics& metrics);
  void after_step();
  void write_trace();
  void write_loss_chart();
  void write_run_summary(const std::vector<StepMetrics>& history) const;

  configs::Config config_;
  torch::Device device_{torch::kCPU};  // run.device, resolved
  std::string attention_backend_;      // model.attention_backend, resolved for device_ and model.dtype
  std::unique_ptr<data::IndexedDataset> dataset_;
  std::unique_ptr<data::LossMaskDataset> loss_mask_;
  std::unique_ptr<data::GlobalBatchSampler> sampler_;
  models::CausalLM model_{nullptr};
  // The replicated AdamW; under parallel.shard_optimizer it never steps and holds no state except
  // while a checkpoint is saved or loaded (the whole per-parameter state passes through it), and
  // sharded_optimizer_ updates the weights.
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  std::unique_ptr<parallel::ShardedAdamW> sharded_optimizer_;
  std::unique_ptr<ChunkScheduler> scheduler_;
  parallel::Communicator* world_ = nullptr;
  // parallel.backend nccl: the NCCL communicator over world_ that the mesh's groups split from
  // (world_ keeps carrying the host-side sums, over MPI).
  std::unique_ptr<parallel::Communicator> nccl_world_;
  std::string communication_backend_ = "mpi";
  std::unique_ptr<parallel::DeviceMesh> mesh_;
  parallel::GroupCostModel cost_model_;
  std::unique_ptr<parallel::CostCalibration> calibration_;
  std::unique_ptr<parallel::GradientReducer> reducer_;
  int pipeline_stage_ = 0;
  int64_t steps_done_ = 0;
  std::string resumed_from_;
  int64_t skipped_steps_ = 0, consecutive_skipped_ = 0;
  std::unique_ptr<TraceRecorder> trace_;  // logging.trace
  bool writes_outputs() const { return world_ == nullptr || world_->rank() == 0; }

  struct Outputs;  // run directory files; opened by train()
  std::unique_ptr<Outputs> outputs_;
};

}  // namespace chunkflow::trainer
