// The training loop; see trainer.h.
#include "trainer/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "configs/config_error.h"
#include "configs/config_loader.h"
#include "core/error.h"
#include "core/file_io.h"
#include "core/logging.h"
#include "core/strings.h"
#include "kernels/attention_torch.h"
#include "data/chunk_inputs.h"
#include "data/chunk_plan.h"
#include "data/token_check.h"
#include "models/chunk_batch.h"
#include "models/hugging_face.h"
#include "models/mixed_precision.h"
#include "kernels/device.h"
#include "parallel/context_parallel.h"
#include "parallel/nccl_communicator.h"
#include "parallel/pipeline_schedule.h"
#include "parallel/tensor_parallel.h"
#include "trainer/checkpoint.h"
#include "trainer/device_setup.h"
#include "trainer/flops.h"
#include "trainer/fused_adamw.h"
#include "trainer/loss_chart.h"
#include "trainer/lr_schedule.h"
#include "trainer/memory_estimate.h"
#include "trainer/memory_stats.h"
#include "trainer/step_profiler.h"
#include "trainer/tensorboard_writer.h"

namespace chunkflow::trainer {
std::string StepMetrics::to_json() const {
  // Non-finite values (a far loss without far tokens, MFU on the CPU) are written as null.
  nlohmann::ordered_json line;
  line["step"] = step;
  line["loss"] = loss;
  line["far_loss"] = far_loss;
  line["lr"] = learning_rate;
  line["grad_norm"] = grad_norm;
  line["seconds"] = seconds;
  line["tokens_per_second"] = tokens_per_second;
  line["tflops"] = tflops;
  line["mfu"] = mfu;
  line["tokens"] = tokens;
  line["loss_tokens"] = loss_tokens;
  line["far_tokens"] = far_tokens;
  line["sequences"] = sequences;
  line["chunks"] = chunks;
  line["recomputed_chunks"] = recomputed_chunks;
  line["peak_rss_bytes"] = peak_rss_bytes;
  line["peak_device_memory_bytes"] = peak_device_memory_bytes;
  line["peak_kv_state_bytes"] = peak_kv_state_bytes;
  line["overlapped_buckets"] = overlapped_buckets;
  line["dp_imbalance"] = dp_imbalance;
  line["pipeline_bubble"] = pipeline_bubble;
  line["pipeline_bubble_simulated"] = pipeline_bubble_simulated;
  line["cost_per_token"] = cost_per_token;
  line["cost_per_attention_entry"] = cost_per_attention_entry;
  line["skipped"] = skipped;
  line["skipped_steps"] = skipped_steps;
  return line.dump();
}

data::ChunkPlan build_step_plan(const configs::ChunkingConfig& chunking, std::span<const data::PlanSequence> sequences) {
  if (chunking.strategy == "pad_to_longest") return data::build_padded_plan(sequences, chunking.micro_batch_sequences);
  if (chunking.strategy == "pack_to_max") {
    for (size_t index = 0; index < sequences.size(); ++index) {
      CF_CHECK(sequences[index].length <= chunking.chunk_size, "chunking.strategy pack_to_max never splits a sequence, but ",
               "sequence ", index, " of the batch has ", sequences[index].length, " tokens > chunking.chunk_size ",
               chunking.chunk_size);
    }
    return data::build_chunk_plan(sequences, chunking.chunk_size, false);
  }
  CF_CHECK(chunking.strategy == "chunkflow", "unknown chunking.strategy \"", chunking.strategy, "\"");
  return data::build_chunk_plan(sequences, chunking.chunk_size, chunking.pack_into_tail);
}

bool takes_weight_decay(const std::string& parameter_name, const torch::Tensor& parameter) {
  return parameter.dim() >= 2 && parameter_name.find("norm") == std::string::npos;
}

std::vector<torch::optim::OptimizerParamGroup> optimizer_groups(models::CausalLM& model,
                                                                 const configs::OptimConfig& optim) {
  std::vector<torch::Tensor> decay, no_decay;
  for (const auto& item : model->named_parameters()) {
    (takes_weight_decay(item.key(), item.value()) ? decay : no_decay).push_back(item.value());
  }
  const auto options = [&](double weight_decay) {
    return std::make_unique<torch::optim::AdamWOptions>(
        torch::optim::AdamWOptions(optim.lr).betas({optim.beta1, optim.beta2}).eps(optim.eps).weight_decay(weight_decay));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, options(optim.weight_decay));
  groups.emplace_back(no_decay, options(0.0));
  return groups;
}

std::unique_ptr<torch::optim::AdamW> make_adamw(std::vector<torch::optim::OptimizerParamGroup> groups,
                                                const configs::OptimConfig& optim) {
  if (optim.fused) return std::make_unique<FusedAdamW>(std::move(groups), torch::optim::AdamWOptions(optim.lr));
  return std::make_unique<torch::optim::AdamW>(std::move(groups), torch::optim::AdamWOptions(optim.lr));
}

std::unique_ptr<torch::optim::AdamW> make_optimizer(models::CausalLM& model, const configs::OptimConfig& optim) {
  return make_adamw(optimizer_groups(model, optim), optim);
}

namespace {

// Parameters whose gradient another rank counts in the global norm: the last stage's copy of a
// tied embedding (the first stage's parameter again) and, on tp ranks other than the first, the
// parameters every tp rank holds whole (norms, o_proj's bias).
std::unordered_set<const void*> counted_elsewhere(models::CausalLM& model) {
  std::unordered_set<const void*> elsewhere;
  const bool tp_copy = model->tensor_parallel().rank != 0;
  for (const auto& item : model->named_parameters()) {
    const bool tied_copy = !model->stage().input_embedding && item.key() == "model.embed_tokens.weight";
    if (tied_copy || (tp_copy && models::tensor_parallel_dim(item.key()) < 0)) {
      elsewhere.insert(item.value().unsafeGetTensorImpl());
    }
  }
  return elsewhere;
}

// Sums a rank's share of the squared gradient norm over the tp ranks (each holds slices) and the
// pipeline stages (each holds layers).
double global_square_sum(double squares, parallel::Communicator* pipeline_group, parallel::Communicator* tensor_group) {
  torch::Tensor total = torch::tensor({squares}, torch::kFloat64);
  for (parallel::Communicator* group : {tensor_group, pipeline_group}) {
    if (group != nullptr && group->size() > 1) group->all_reduce(total, parallel::ReduceOp::kSum);
  }
  return total.item<double>();
}

}  // namespace

double clip_gradients(models::CausalLM& model, double max_norm, parallel::Communicator* pipeline_group,
                      parallel::Communicator* tensor_group) {
  const std::unordered_set<const void*> elsewhere = counted_elsewhere(model);
  std::vector<torch::Tensor> gradients, counted;
  for (const auto& item : model->named_parameters()) {
    const torch::Tensor& gradient = item.value().grad();
    if (!gradient.defined()) continue;
    gradients.push_back(gradient);
    if (!elsewhere.count(item.value().unsafeGetTensorImpl())) counted.push_back(gradient);
  }
  // Per-tensor norms in one multi-tensor kernel (float32 accumulation), summed in float64; one
  // device-to-host read for the whole model (the optimizer step needs the norm on the host).
  double squares = 0.0;
  if (!counted.empty()) {
    squares = torch::stack(at::_foreach_norm(counted, 2)).to(torch::kFloat64).square().sum().item<double>();
  }
  const double norm = std::sqrt(global_square_sum(squares, pipeline_group, tensor_group));
  if (max_norm > 0 && std::isfinite(norm) && norm > max_norm) {
    torch::NoGradGuard no_grad;
    at::_foreach_mul_(gradients, max_norm / (norm + 1e-6));
  }
  return norm;
}

double clip_sharded_gradients(parallel::ShardedAdamW& optimizer, models::CausalLM& model, double max_norm,
                              parallel::DeviceMesh& mesh) {
  const std::unordered_set<const void*> elsewhere = counted_elsewhere(model);
  const auto& parameters = optimizer.parameters();
  torch::Tensor squares = torch::tensor({optimizer.gradient_square_sum([&](size_t index) {
                                          return !elsewhere.count(parameters[index].unsafeGetTensorImpl());
                                        })},
                                        torch::kFloat64);
  // Each rank holds slices of its stage's gradients, the tp ranks slices of the parameters, the
  // stages the rest of the model.
  if (mesh.stage_group().size() > 1) mesh.stage_group().all_reduce(squares, parallel::ReduceOp::kSum);
  const double norm = std::sqrt(global_square_sum(squares.item<double>(), &mesh.pp_group(), &mesh.tp_group()));
  if (max_norm > 0 && std::isfinite(norm) && norm > max_norm) optimizer.scale_gradients(max_norm / (norm + 1e-6));
  return norm;
}

namespace {

// The first stage's embedding and the last stage's LM head are one matrix: adds the two stages'
// gradients on both (the optimizers then keep the two copies equal). Pairs the ranks of the two
// stages with the same dp and cp coordinates, so it is right for whole sums and partial ones alike.
void add_tied_embedding_gradients(models::CausalLM& model, parallel::DeviceMesh& mesh) {
  parallel::Communicator& pipeline = mesh.pp_group();
  const int stages = pipeline.size(), stage = mesh.coordinates().pp;
  if (stages == 1 || !model->config().tie_word_embeddings || (stage != 0 && stage != stages - 1)) return;
  torch::Tensor& weight = model->model->embed_tokens->weight;
  if (!weight.grad().defined()) weight.mutable_grad() = torch::zeros_like(weight);
  const int peer = stage == 0 ? stages - 1 : 0;
  constexpr int kTiedEmbeddingTag = 7201;
  const torch::Tensor mine = weight.grad().clone();
  const auto send = pipeline.isend(mine, peer, kTiedEmbeddingTag);
  torch::Tensor theirs = torch::empty_like(mine);
  pipeline.recv(theirs, peer, kTiedEmbeddingTag);
  send->wait();
  weight.mutable_grad().add_(theirs);
}

}  // namespace

void reduce_gradients(models::CausalLM& model, parallel::DeviceMesh& mesh, parallel::GradientReducer* reducer,
                      parallel::ShardedAdamW* sharded) {
  // Under sequence parallelism each tp rank ran the whole parameters (norms, o_proj's bias) on its
  // own rows only: their gradients are partial sums over the tp group too. Sums commute, so this
  // comes before the reduce-scatter or after the all-reduce (whose buckets the backward filled).
  std::vector<torch::Tensor> whole_on_every_tp_rank;
  if (model->tensor_parallel().splits_rows()) {
    for (const auto& item : model->named_parameters()) {
      if (models::tensor_parallel_dim(item.key()) < 0) whole_on_every_tp_rank.push_back(item.value());
    }
  }
  const auto sum_over_tp = [&] {
    if (!whole_on_every_tp_rank.empty()) parallel::all_reduce_gradients(whole_on_every_tp_rank, mesh.tp_group());
  };
  // dp ranks ran different groups and cp ranks different rows of the same chunks: both hold
  // partial sums of every gradient of their stage.
  if (sharded != nullptr) {
    // Partial sums first: the tied pair's exchange then reaches every slice through the sum.
    sum_over_tp();
    add_tied_embedding_gradients(model, mesh);
    sharded->reduce_scatter_gradients();
    return;
  }
  if (reducer != nullptr) {
    reducer->finish();
  } else if (mesh.stage_group().size() > 1) {
    parallel::all_reduce_gradients(model->parameters(), mesh.stage_group());
  }
  sum_over_tp();
  add_tied_embedding_gradients(model, mesh);
}

// Keeps the lines of metrics.jsonl whose "step" is at most `last_step` (rewritten atomically).
void truncate_metrics_after(const std::string& path, int64_t last_step) {
  std::istringstream lines(core::read_file(path));
  std::string kept, line;
  while (std::getline(lines, line)) {
    const size_t key = line.find("\"step\":");
    if (key == std::string::npos) continue;
    const int64_t step = std::strtoll(line.c_str() + key + 7, nullptr, 10);
    if (step <= last_step) kept += line + "\n";
  }
  core::write_file_atomic(path, kept);
}

struct Trainer::Outputs {
  std::unique_ptr<TensorBoardWriter> tensorboard;
  std::FILE* metrics = nullptr;
  bool bar = false;
  std::chrono::steady_clock::time_point start;
  ~Outputs() {
    if (metrics != nullptr) std::fclose(metrics);
  }
};

namespace {

// Before the model exists: this rank's memory estimate against its device. A model state larger
// than the device is an error here, not an allocator failure later; a tight fit is a warning.
void check_memory_before_start(const configs::Config& config, int stage, const data::IndexedDataset& dataset,
                               const torch::Device& device, bool log) {
  const auto& lengths = dataset.lengths();
  const int64_t longest = lengths.empty() ? 0 : *std::max_element(lengths.begin(), lengths.end());
  const RankMemoryEstimate estimate = estimate_rank_memory(config, stage, longest);
  const DeviceMemory memory = read_device_memory(device);
  const int local_ranks = std::max(local_world_size_from_environment(), 1);
  const int gpus = std::max(kernels::cuda_device_count(), 1);
  const int ranks_sharing = device.is_cpu() ? local_ranks : (local_ranks + gpus - 1) / gpus;
  if (log) core::log_info(describe_memory_estimate(estimate, memory, longest));
  const std::string warning = check_memory_estimate(estimate, memory, config, ranks_sharing);
  if (log && !warning.empty()) core::log_warn(warning);
}

}  // namespace

Trainer::Trainer(configs::Config config, parallel::Communicator* world) : config_(std::move(config)), world_(world) {
  config_.validate();
  // Fine-tuning from a Hugging Face directory: its config.json defines the architecture.
  if (!config_.model.init_from.empty()) config_.model = models::merge_hf_config(config_.model);
  device_ = resolve_training_device(config_.run.device, local_rank_from_environment());
  // An attention backend that cannot run this device / dtype / head size fails now, not at step 1.
  attention_backend_ = kernels::attention_backend_name(kernels::resolve_attention_backend(
      kernels::parse_attention_backend(config_.model.attention_backend), device_,
      models::parse_dtype(config_.model.dtype, "model.dtype"), config_.model.effective_head_dim()));
  if (world_ != nullptr && world_->size() > 1) {
    communication_backend_ =
        choose_communication_backend(config_.parallel.backend, device_, local_world_size_from_environment(),
                                     kernels::cuda_device_count(), parallel::built_with_nccl());
    if (communication_backend_ == "nccl") nccl_world_ = parallel::nccl_communicator(*world_, device_.index());
    mesh_ = std::make_unique<parallel::DeviceMesh>(config_.parallel, nccl_world_ ? *nccl_world_ : *world_);
    pipeline_stage_ = mesh_->coordinates().pp;
  } else {
    config_.parallel.check_world(1);
  }
  const int stages = static_cast<int>(config_.parallel.pp);
  const models::ModelStage stage = models::pipeline_stage(config_.model, pipeline_stage_, stages);
  // Balance DP ranks by model FLOPs: linear layers per token, attention per causal score entry.
  cost_model_ = flop_cost_model(config_.model);
  // Measured compute times refine it step by step (the FLOP ratio is the prior).
  calibration_ = std::make_unique<parallel::CostCalibration>(cost_model_);
  core::set_log_level(core::parse_log_level(config_.logging.level, "logging.level"));

  dataset_ = std::make_unique<data::IndexedDataset>(config_.data.path);
  check_token_ids();
  open_loss_mask();
  if (config_.chunking.strategy == "pack_to_max") {
    // The baseline never splits: refuse at start, not at the step that draws the sequence.
    const auto& lengths = dataset_->lengths();
    const auto longest = std::max_element(lengths.begin(), lengths.end());
    if (longest != lengths.end() && *longest > config_.chunking.chunk_size) {
      throw configs::ConfigError(
          "chunking.chunk_size",
          core::str_cat("chunking.strategy pack_to_max never splits a sequence, but sequence ",
                        longest - lengths.begin(), " of ", config_.data.path, " has ", *longest,
                        " tokens > chunking.chunk_size ", config_.chunking.chunk_size,
                        "; set chunking.chunk_size to at least ", *longest, " (the maximum context length)"));
    }
  }
  sampler_ = std::make_unique<data::GlobalBatchSampler>(dataset_->lengths(), config_.data,
                                                         static_cast<uint64_t>(config_.run.seed));
  check_memory_before_start(config_, pipeline_stage_, *dataset_, device_, writes_outputs());
  build_model(stage);
  optimizer_ = make_optimizer(model_, config_.optim);
  PipelineStage pipeline;
  pipeline.stage = pipeline_stage_;
  pipeline.stages = stages;
  pipeline.group = mesh_ != nullptr ? &mesh_->pp_group() : nullptr;
  pipeline.extra_in_flight = config_.parallel.pipeline_extra_in_flight;
  if (config_.logging.trace) {
    // Time zero after a barrier, so every rank of a machine shares the axis.
    if (world_ != nullptr && world_->size() > 1) world_->barrier();
    trace_ = std::make_unique<TraceRecorder>(world_ != nullptr ? world_->rank() : 0, TraceRecorder::Clock::now());
    pipeline.trace = trace_.get();
  }
  scheduler_ = std::make_unique<ChunkScheduler>(model_, config_.chunking.resident_chunks, pipeline,
                                                config_.chunking.recompute_layers);
  const auto bucket_bytes = static_cast<int64_t>(config_.parallel.gradient_bucket_mb * 1024 * 1024);
  if (mesh_ != nullptr && config_.parallel.shard_optimizer) {
    sharded_optimizer_ = std::make_unique<parallel::ShardedAdamW>(
        optimizer_groups(model_, config_.optim), mesh_->stage_group(),
        [&](std::vector<torch::optim::OptimizerParamGroup> slices) { return make_adamw(std::move(slices), config_.optim); },
        bucket_bytes);
  } else if (mesh_ != nullptr && mesh_->stage_group().size() > 1) {
    reducer_ = std::make_unique<parallel::GradientReducer>(model_->parameters(), mesh_->stage_group(), bucket_bytes);
  }

  // Resume: weights, optimizer state, RNG and sampler position of the checkpoint (any layout).
  resumed_from_ = resolve_resume(config_);
  if (!resumed_from_.empty()) {
    const checkpoint::Manifest manifest = load_checkpoint(resumed_from_, config_, *dataset_, model_, *optimizer_);
    if (sharded_optimizer_) {  // keep this rank's slices of the whole state
      sharded_optimizer_->load_state(optimizer_->state());
      optimizer_->state().clear();
    }
    steps_done_ = manifest.step();
    data::SamplerPosition position;
    position.epoch = manifest.sampler().epoch();
    position.cursor = manifest.sampler().cursor();
    position.step = manifest.sampler().step();
    sampler_->restore(position);
    skipped_steps_ = manifest.counters().skipped_steps();
    consecutive_skipped_ = manifest.counters().consecutive_skipped_steps();
    core::log_info("resumed from ", resumed_from_, " at step ", steps_done_, " (saved with dp ",
                   manifest.layout().dp(), " cp ", manifest.layout().cp(), " pp ", manifest.layout().pp(), " tp ",
                   std::max<int64_t>(manifest.layout().tp(), 1), ")");
  } else if (config_.checkpoint.resume == "auto") {
    core::log_info("checkpoint.resume = auto: no checkpoint in ", config_.checkpoint_dir(), ", starting fresh");
  }
}

namespace {

// "layout dp 2 x cp 1 x pp 1 x tp 2 (sequence parallel), AdamW sharded over dp x cp" for the log.
std::string describe_layout(const configs::ParallelConfig& parallel) {
  return core::str_cat("layout dp ", parallel.dp, " x cp ", parallel.cp, " x pp ", parallel.pp, " x tp ", parallel.tp,
                       parallel.tp > 1 ? (parallel.sequence_parallel ? " (sequence parallel)" : " (no sequence parallelism)")
                                       : "",
                       ", AdamW ", parallel.shard_optimizer && parallel.dp * parallel.cp > 1 ? "sharded over dp x cp"
                                                                                            : "replicated");
}

}  // namespace

// Initializes (or loads) the float32 master weights on the CPU — the same values whatever the
// device — then moves them to the training device.
void Trainer::build_model(const models::ModelStage& stage) {
  // Every stage draws the same initialization seed, so a pipeline holds the single-rank weights.
  torch::manual_seed(static_cast<uint64_t>(config_.run.seed));
  // Tensor parallelism: this rank's slice of every split parameter (the same values as the slice
  // of the single-rank model).
  models::TensorParallel tp;
  if (mesh_ != nullptr && config_.parallel.tp > 1) {
    tp = parallel::tensor_parallel_group(mesh_->tp_group(), config_.parallel.sequence_parallel);
  }
  model_ = models::CausalLM(config_.model, stage, std::nullopt, std::move(tp));
  if (!config_.model.init_from.empty()) {
    models::load_hf_weights(model_, config_.model.init_from);
    core::log_info("loaded ", model_->parameters().size(), " weight tensors from ", config_.model.init_from);
  }
  model_->to(device_);
  if (writes_outputs()) {
    core::log_info("device ", describe_training_device(device_), "; ",
                   model_->compute_weights().mixed() ? "mixed precision: " + config_.model.dtype +
                                                           " compute, float32 master weights, gradients and AdamW state"
                                                     : std::string("float32"),
                   "; communication ", communication_backend_, "; attention backend ", attention_backend_,
                   " (model.attention_backend = ", config_.model.attention_backend, "); ", describe_layout(config_.parallel));
    if (device_.is_cpu() && model_->compute_weights().mixed()) {
      core::log_warn("model.dtype = ", config_.model.dtype, " on the CPU: the kernels compute in float32 and round, "
                     "which is slower than float32 training; meant for tests");
    }
  }
}

void Trainer::save_checkpoint_now() {
  const TraceSpan span(trace_.get(), core::str_cat("checkpoint step ", steps_done_), "checkpoint", TraceRecorder::kStep);
  CheckpointContents contents;
  contents.step = steps_done_;
  contents.model = &model_;
  contents.optimizer = optimizer_.get();
  // Checkpoints hold whole per-parameter state whatever the layout: gathered for the save only, and
  // kept only by the ranks that assemble the stage's shard (dp = cp = 0; see save_checkpoint).
  if (sharded_optimizer_) {
    const bool assembles = mesh_->coordinates().dp == 0 && mesh_->coordinates().cp == 0;
    optimizer_->state() = sharded_optimizer_->gather_state(assembles);
  }
  contents.sampler = sampler_->position();
  contents.dataset = dataset_fingerprint(*dataset_, config_.data.path);
  contents.config = &config_;
  contents.counters.set_skipped_steps(skipped_steps_);
  contents.counters.set_consecutive_skipped_steps(consecutive_skipped_);
  // The gathered state lives for the save only, whether it succeeds or throws.
  struct DropGatheredState {
    torch::optim::AdamW* optimizer;
    ~DropGatheredState() {
      if (optimizer != nullptr) optimizer->state().clear();
    }
  } drop{sharded_optimizer_ ? optimizer_.get() : nullptr};
  save_checkpoint(contents, world_ != nullptr && world_->size() > 1 ? world_ : nullptr, mesh_.get());
}

void Trainer::write_trace() {
  if (!trace_) return;
  const int rank = world_ != nullptr ? world_->rank() : 0;
  const std::string folder = config_.run.run_dir() + "/trace";
  core::make_directories(folder);
  const std::string path = core::str_cat(folder, "/rank-", rank, ".json");
  trace_->write(path);
  if (trace_->dropped() > 0) {
    core::log_warn("trace ", path, ": kept the first ", trace_->events(), " spans, dropped ", trace_->dropped());
  }
  if (writes_outputs()) core::log_info("timeline of every rank in ", folder, "/ (open in https://ui.perfetto.dev)");
}

// The mask beside the dataset is used without a second key (training on prompt tokens by
// forgetting data.loss_mask_path would be silent); the log says which tokens carry loss.
void Trainer::open_loss_mask() {
  const std::string mask = config_.data.resolved_loss_mask();
  if (!mask.empty()) loss_mask_ = std::make_unique<data::LossMaskDataset>(mask, *dataset_);
  if (!writes_outputs()) return;  // the count is for rank 0's log only
  int64_t loss_tokens = 0;
  std::string source;
  if (mask.empty()) {
    for (const int32_t length : dataset_->lengths()) loss_tokens += std::max(length - 1, 0);
    source = config_.data.loss_mask_path == "none" ? "data.loss_mask_path = none: every token but each sequence's first"
                                                   : core::str_cat("no loss mask (no ", config_.data.path,
                                                                   "_loss_mask): every token but each sequence's first");
  } else {
    for (int64_t sequence = 0; sequence < dataset_->size(); ++sequence) {
      const std::vector<uint8_t> flags = loss_mask_->read(sequence);
      // mask[i] marks token i as a target (predicted from [0, i)): the first token never is one.
      for (size_t position = 1; position < flags.size(); ++position) loss_tokens += flags[position];
    }
    source = config_.data.loss_mask_path.empty()
                 ? core::str_cat("loss mask ", mask, " (found beside data.path; data.loss_mask_path = none ignores it)")
                 : core::str_cat("loss mask ", mask);
  }
  const double share = dataset_->total_tokens() > 0
                           ? 100.0 * static_cast<double>(loss_tokens) / static_cast<double>(dataset_->total_tokens())
                           : 0.0;
  core::log_info(source, ": ", core::format_count(static_cast<double>(loss_tokens)), " of ",
                 core::format_count(static_cast<double>(dataset_->total_tokens())), " tokens (",
                 core::format_fixed(share, 1), "%) carry loss");
}

// An id past the embedding would fail deep inside LibTorch, at whichever step draws its sequence:
// every id is checked when the dataset is opened (chunk_source checks again as it reads). Rank 0
// scans for all (same data.path everywhere); its error aborts the job through main.
void Trainer::check_token_ids() {
  if (!writes_outputs()) return;
  const auto start = std::chrono::steady_clock::now();
  const std::optional<data::TokenOutsideVocabulary> outside =
      data::first_token_outside_vocabulary(*dataset_, config_.model.vocab_size);
  if (outside) CF_FAIL(describe_token_outside_vocabulary(outside->id, outside->position, outside->sequence));
  core::log_debug("token ids of ", config_.data.path, " checked against model.vocab_size = ", config_.model.vocab_size,
                  " in ", core::format_duration(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()));
}

std::string Trainer::describe_token_outside_vocabulary(int64_t id, int64_t position, int64_t sequence) const {
  return core::str_cat("token id ", id, " at position ", position, " of sequence ", sequence, " in ", config_.data.path,
                       " is outside [0, model.vocab_size = ", config_.model.vocab_size,
                       "); the dataset was tokenized for another vocabulary (chunkflow-data prepare --vocab-size checks "
                       "this)");
}

// A fresh start (no checkpoint.resume) into a folder that holds an earlier run would truncate its
// metrics and mix its checkpoints with the new run's (keep_last could then delete the new ones):
// refused, unless run.overwrite says to delete those outputs first.
void Trainer::claim_run_folder() {
  if (!config_.checkpoint.resume.empty()) return;
  const std::string run_dir = config_.run.run_dir();
  std::vector<std::string> earlier;
  for (const char* output : {"metrics.jsonl", "loss.svg", "summary.json", "config.yaml", "tensorboard", "trace", "profile"}) {
    if (core::path_exists(run_dir + "/" + output)) earlier.push_back(run_dir + "/" + output);
  }
  for (const std::string& checkpoint : list_checkpoints(config_.checkpoint_dir())) earlier.push_back(checkpoint);
  if (earlier.empty()) return;
  std::string listed;
  for (const std::string& path : earlier) listed += (listed.empty() ? "" : ", ") + path;
  CF_CHECK(config_.run.overwrite, "run folder ", run_dir, " already holds a run (", listed,
           "): set checkpoint.resume=auto to continue it, run.overwrite=true to delete those outputs and start "
           "again, or choose another run.name (now \"", config_.run.name, "\")");
  for (const std::string& path : earlier) std::filesystem::remove_all(path);
  core::log_warn("run.overwrite = true: deleted the earlier run's outputs: ", listed);
}

StepMetrics Trainer::next_step() {
  return steps_done_ + 1 == config_.logging.profile_step ? profiled_step() : train_step();
}

// Every rank writes its own trace and table; rank 0 also logs its table.
StepMetrics Trainer::profiled_step() {
  StepProfiler profiler(device_);
  profiler.start();
  const StepMetrics metrics = train_step();
  const std::string folder = config_.run.run_dir() + "/profile";
  core::make_directories(folder);
  const std::string stem = core::str_cat(folder, "/step-", metrics.step, "-rank-", world_ != nullptr ? world_->rank() : 0);
  const StepProfile profile = profiler.stop(stem + ".json");
  core::write_file_atomic(stem + ".txt", profile.summary(50));
  if (writes_outputs()) {
    core::log_info("profile of step ", metrics.step, " (its own time includes the profiler's; every rank's trace and "
                   "table in ", folder, "/):\n", profile.summary(12));
  }
  return metrics;
}

void Trainer::after_step() {
  const int64_t interval = config_.checkpoint.interval;
  if (interval < 0) return;  // checkpoints off
  const bool last = steps_done_ == config_.run.steps;
  if (last || (interval > 0 && steps_done_ % interval == 0)) save_checkpoint_now();
}

Trainer::~Trainer() = default;


// One global batch of a step: the sampler's draw, its loss masks and its chunk plan.
struct Trainer::PlannedBatch {
  data::GlobalBatch batch;
  std::vector<std::vector<uint8_t>> masks;
  std::vector<data::PlanSequence> sequences;
  data::ChunkPlan plan;
};

// What the step's batches ran on this rank, before the sums over the mesh.
struct Trainer::StepWork {
  LossTotals totals;
  std::vector<int64_t> lengths;            // every sequence of the step (for the FLOP count)
  double my_tokens = 0, my_entries = 0;    // this DP rank's work, for the cost calibration
  double simulated_seconds = 0, simulated_busy = 0;  // the pipeline simulator's prediction
};

StepMetrics Trainer::train_step() {
  const auto start = std::chrono::steady_clock::now();
  reset_peak_device_memory(device_);
  StepMetrics metrics;
  metrics.step = steps_done_ + 1;
  metrics.learning_rate = learning_rate(config_.optim, steps_done_, config_.run.steps);
  for (torch::optim::AdamW* adamw : {optimizer_.get(), sharded_optimizer_ ? &sharded_optimizer_->adamw() : nullptr}) {
    if (adamw == nullptr) continue;
    for (auto& group : adamw->param_groups()) {
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(metrics.learning_rate);
    }
  }
  StepWork work;
  std::vector<PlannedBatch> planned = plan_step(metrics, work);
  try {
    run_step(planned, metrics, work);
    if (mesh_ != nullptr) reduce_step(metrics, work);
    apply_update(planned, metrics, work.totals);
  } catch (const std::exception& error) {
    if (!is_out_of_memory(error)) throw;
    const int64_t longest = work.lengths.empty() ? 0 : *std::max_element(work.lengths.begin(), work.lengths.end());
    CF_FAIL(describe_out_of_memory(config_.chunking,
                                   {metrics.step, metrics.chunks, metrics.sequences, longest,
                                    describe_training_device(device_)},
                                   error.what()));
  }
  ++steps_done_;
  finish_metrics(metrics, work, start);
  return metrics;
}

// Plans every global batch of the step first: the loss divisor is the step's loss-token count.
std::vector<Trainer::PlannedBatch> Trainer::plan_step(StepMetrics& metrics, StepWork& work) {
  std::vector<PlannedBatch> planned(static_cast<size_t>(config_.optim.grad_accumulation));
  const auto plan_start = TraceRecorder::Clock::now();
  for (auto& entry : planned) {
    entry.batch = sampler_->next();
    entry.masks.resize(entry.batch.sequences.size());
    for (size_t i = 0; i < entry.batch.sequences.size(); ++i) {
      const int64_t index = entry.batch.sequences[i];
      if (loss_mask_) entry.masks[i] = loss_mask_->read(index);
      entry.sequences.push_back({dataset_->length(index), entry.masks[i]});
      work.lengths.push_back(dataset_->length(index));
    }
    entry.plan = build_step_plan(config_.chunking, entry.sequences);
    metrics.sequences += static_cast<int64_t>(entry.batch.sequences.size());
    metrics.chunks += static_cast<int64_t>(entry.plan.chunks().size());
  }
  if (trace_) {
    trace_->add(core::str_cat("plan step ", metrics.step), "plan", TraceRecorder::kStep, plan_start,
                TraceRecorder::Clock::now(), core::str_cat("\"chunks\": ", metrics.chunks, ", \"sequences\": ", metrics.sequences));
  }
  return planned;
}

// The plan groups this DP rank runs of one batch (all of them without data parallelism).
std::vector<int32_t> Trainer::groups_of_this_rank(const data::ChunkPlan& plan, StepMetrics& metrics, StepWork& work) {
  std::vector<int32_t> groups;
  if (mesh_ == nullptr || config_.parallel.dp == 1) {
    groups.resize(plan.groups().size());
    for (size_t group = 0; group < groups.size(); ++group) groups[group] = static_cast<int32_t>(group);
    return groups;
  }
  const parallel::DpAssignment assignment =
      parallel::balance_chunk_groups(plan, static_cast<int>(config_.parallel.dp), cost_model_);
  metrics.dp_imbalance = std::max(metrics.dp_imbalance, assignment.imbalance());
  groups = assignment.groups_of_rank[static_cast<size_t>(mesh_->coordinates().dp)];
  for (const int32_t group : groups) {
    work.my_tokens += static_cast<double>(plan.groups()[static_cast<size_t>(group)].tokens);
    work.my_entries += static_cast<double>(plan.groups()[static_cast<size_t>(group)].attention_entries);
  }
  return groups;
}

// Builds the chunk batches of `entry` on the training device (this rank's cp rows when cp > 1).
ChunkBatchSource Trainer::chunk_source(const PlannedBatch& entry) {
  const data::TokenReader reader = [this, &entry](int32_t sequence, int64_t begin, int64_t count, int32_t* out) {
    const int64_t index = entry.batch.sequences[static_cast<size_t>(sequence)];
    dataset_->read(index, begin, count, out);
    // An id past the embedding would fail deep inside LibTorch without naming the data.
    for (int64_t i = 0; i < count; ++i) {
      if (out[i] < 0 || out[i] >= config_.model.vocab_size) CF_FAIL(describe_token_outside_vocabulary(out[i], begin + i, index));
    }
  };
  return [this, &entry, reader](int32_t chunk) {
    models::ChunkBatch batch =
        models::make_chunk_batch(data::gather_chunk_inputs(entry.plan, chunk, entry.sequences, reader), device_);
    batch.labels_checked = true;  // labels are token ids the reader checked against model.vocab_size
    if (mesh_ != nullptr && config_.parallel.cp > 1) batch = parallel::shard_chunk_batch(batch, mesh_->cp_group());
    return batch;
  };
}

// Forward and backward of this rank's share of every batch; gradients accumulate in .grad.
void Trainer::run_step(std::vector<PlannedBatch>& planned, StepMetrics& metrics, StepWork& work) {
  optimizer_->zero_grad();
  int64_t step_loss_tokens = 0;
  for (const auto& entry : planned) step_loss_tokens += entry.plan.loss_tokens();
  const double loss_scale = 1.0 / static_cast<double>(std::max<int64_t>(step_loss_tokens, 1));
  const int stages = static_cast<int>(config_.parallel.pp);
  if (mesh_ != nullptr && config_.parallel.dp > 1) {
    if (config_.parallel.calibrate_costs) cost_model_ = calibration_->model();
    metrics.cost_per_token = cost_model_.per_token;
    metrics.cost_per_attention_entry = cost_model_.per_attention_entry;
  }
  for (auto& entry : planned) {
    const std::vector<int32_t> groups = groups_of_this_rank(entry.plan, metrics, work);
    // The step's last backward on this rank can overlap the gradient all-reduce.
    const bool overlap = &entry == &planned.back() && reducer_ && config_.parallel.overlap_gradient_reduce;
    const std::function<void()> arm = [&] { reducer_->arm(); };
    work.totals.add(
        scheduler_->run_groups(entry.plan, groups, chunk_source(entry), loss_scale, overlap ? arm : std::function<void()>()));
    if (stages > 1) {
      // The simulator's prediction for the same schedule.
      const auto schedule = parallel::pipeline_schedule(entry.plan, groups, config_.chunking.resident_chunks, stages,
                                                        config_.parallel.pipeline_extra_in_flight);
      const parallel::PipelineSimulation simulation =
          parallel::simulate_pipeline(schedule, pipeline_op_cost(config_.model, cost_model_, entry.plan, stages));
      work.simulated_seconds += simulation.step_seconds;
      for (const double busy : simulation.busy_seconds) work.simulated_busy += busy;
    }
  }
}

// Sums gradients over dp x cp (and the tied embedding over the pipeline ends), feeds the cost
// calibration, and sums / maxes the step's loss figures over the world.
void Trainer::reduce_step(StepMetrics& metrics, StepWork& work) {
  const TraceSpan reduce_span(trace_.get(), "gradient all-reduce + loss sums", "communication", TraceRecorder::kStep);
  LossTotals& totals = work.totals;
  const int stages = static_cast<int>(config_.parallel.pp);
  reduce_gradients(model_, *mesh_, reducer_.get(), sharded_optimizer_.get());
  if (reducer_) metrics.overlapped_buckets = reducer_->overlapped_buckets();
  if (config_.parallel.dp > 1 && config_.parallel.calibrate_costs) {
    // Pool every rank's (work, compute seconds) of this step; rank 0's sums are broadcast so
    // that every rank fits bit-identical coefficients and computes the same assignment.
    torch::Tensor observed = parallel::CostCalibration::observation(work.my_tokens, work.my_entries, totals.busy_seconds);
    world_->all_reduce(observed, parallel::ReduceOp::kSum);
    world_->broadcast(observed, 0);
    calibration_->add_step(observed);
  }
  // Losses live on the last stages, spread over dp and cp ranks: sum over the world. Host
  // figures travel as one CPU tensor whatever the training device.
  const double simulated_bubble =
      work.simulated_busy > 0 ? 1.0 - work.simulated_busy / (stages * work.simulated_seconds) : 0.0;
  // The tp ranks of a chunk compute the same loss and count the same tokens: the first counts them.
  const double tp_share = mesh_->coordinates().tp == 0 ? 1.0 : 0.0;
  torch::Tensor sums = torch::tensor(
      {tp_share * totals.loss_sum, tp_share * static_cast<double>(totals.loss_tokens), tp_share * totals.far_loss_sum,
       tp_share * static_cast<double>(totals.far_tokens), tp_share * static_cast<double>(totals.real_tokens),
       // Every cp rank recomputes the same chunks: count them once.
       tp_share * static_cast<double>(mesh_->coordinates().cp == 0 ? totals.chunk_recomputes : 0),
       totals.busy_seconds, simulated_bubble},
      torch::kFloat64);
  world_->all_reduce(sums, parallel::ReduceOp::kSum);
  const double* summed = sums.data_ptr<double>();
  totals.loss_sum = summed[0];
  totals.loss_tokens = static_cast<int64_t>(summed[1]);
  totals.far_loss_sum = summed[2];
  totals.far_tokens = static_cast<int64_t>(summed[3]);
  totals.real_tokens = static_cast<int64_t>(summed[4]);
  totals.chunk_recomputes = static_cast<int64_t>(summed[5]);
  torch::Tensor maxima = torch::tensor({static_cast<double>(totals.peak_state_bytes), totals.pipeline_seconds,
                                        static_cast<double>(peak_device_memory_bytes(device_))},
                                       torch::kFloat64);
  world_->all_reduce(maxima, parallel::ReduceOp::kMax);
  const double* largest = maxima.data_ptr<double>();
  totals.peak_state_bytes = static_cast<int64_t>(largest[0]);
  metrics.peak_device_memory_bytes = static_cast<int64_t>(largest[2]);
  if (stages > 1) {
    const double ranks = static_cast<double>(world_->size());
    metrics.pipeline_bubble = 1.0 - summed[6] / (ranks * largest[1]);
    metrics.pipeline_bubble_simulated = summed[7] / ranks;
  }
}

// Clips and steps, or skips a step whose loss or gradient norm is not finite (every rank decides
// alike, from the all-reduced loss and the collective gradient norm).
void Trainer::apply_update(const std::vector<PlannedBatch>& planned, StepMetrics& metrics, const LossTotals& totals) {
  const TraceSpan optimizer_span(trace_.get(), core::str_cat("optimizer step ", metrics.step), "optimizer",
                                  TraceRecorder::kStep);
  metrics.grad_norm =
      sharded_optimizer_
          ? clip_sharded_gradients(*sharded_optimizer_, model_, config_.optim.max_grad_norm, *mesh_)
          : clip_gradients(model_, config_.optim.max_grad_norm, mesh_ != nullptr ? &mesh_->pp_group() : nullptr,
                           mesh_ != nullptr ? &mesh_->tp_group() : nullptr);
  if (std::isfinite(metrics.grad_norm) && std::isfinite(totals.loss_sum)) {
    if (sharded_optimizer_) {
      sharded_optimizer_->step();
    } else {
      optimizer_->step();
    }
    consecutive_skipped_ = 0;
    metrics.skipped_steps = skipped_steps_;
    return;
  }
  // The optimizer state stays as it was.
  metrics.skipped = true;
  ++skipped_steps_;
  ++consecutive_skipped_;
  metrics.skipped_steps = skipped_steps_;
  const std::string diagnosis = describe_non_finite_step(planned, totals, metrics.grad_norm);
  optimizer_->zero_grad();
  CF_CHECK(consecutive_skipped_ <= config_.optim.max_skipped_steps, "step ", metrics.step, ": ", consecutive_skipped_,
           " step(s) in a row with a non-finite loss or gradient norm (optim.max_skipped_steps = ",
           config_.optim.max_skipped_steps, "): ", diagnosis,
           ". Lower optim.lr, check those sequences, or resume from an earlier checkpoint");
  core::log_warn("step ", metrics.step, " skipped (non-finite): ", diagnosis, " (", consecutive_skipped_,
                 " in a row; optim.max_skipped_steps = ", config_.optim.max_skipped_steps, ")");
}

// The parameters with non-finite gradients (first 5) and the step's sequences (first 12).
std::string Trainer::describe_non_finite_step(const std::vector<PlannedBatch>& planned, const LossTotals& totals,
                                              double grad_norm) {
  std::vector<std::string> bad_parameters;
  for (const auto& parameter : model_->named_parameters()) {
    const torch::Tensor& gradient = parameter.value().grad();
    if (gradient.defined() && !torch::isfinite(gradient).all().item<bool>()) bad_parameters.push_back(parameter.key());
    if (bad_parameters.size() == 5) break;
  }
  std::vector<std::string> sequences;
  for (const auto& entry : planned) {
    for (const int64_t index : entry.batch.sequences) {
      if (sequences.size() < 12) sequences.push_back(std::to_string(index));
    }
  }
  return core::str_cat("loss sum ", totals.loss_sum, ", gradient norm ", grad_norm,
                       "; parameters with non-finite gradients", world_ != nullptr && world_->size() > 1 ? " on this rank" : "",
                       ": ", bad_parameters.empty() ? std::string("none") : core::join(bad_parameters, ", "),
                       "; the step's dataset sequences (first 12): ", core::join(sequences, " "));
}

void Trainer::finish_metrics(StepMetrics& metrics, const StepWork& work, std::chrono::steady_clock::time_point start) {
  const LossTotals& totals = work.totals;
  // The optimizer step was queued on the device; the step ends when it has run.
  synchronize_device(device_);
  metrics.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  metrics.tokens = totals.real_tokens;
  metrics.loss_tokens = totals.loss_tokens;
  metrics.loss = totals.loss_tokens > 0 ? totals.loss_sum / static_cast<double>(totals.loss_tokens) : NAN;
  metrics.far_tokens = totals.far_tokens;
  metrics.far_loss = totals.far_tokens > 0 ? totals.far_loss_sum / static_cast<double>(totals.far_tokens) : NAN;
  metrics.recomputed_chunks = totals.chunk_recomputes;
  metrics.peak_kv_state_bytes = totals.peak_state_bytes;
  metrics.tokens_per_second = static_cast<double>(metrics.tokens) / metrics.seconds;
  metrics.tflops = training_flops(config_.model, work.lengths) / metrics.seconds / 1e12;
  if (device_.is_cuda()) {
    metrics.mfu = metrics.tflops * 1e12 / (config_.run.peak_tflops * 1e12 *
                                           static_cast<double>(world_ != nullptr ? world_->size() : 1));
    if (mesh_ == nullptr) metrics.peak_device_memory_bytes = peak_device_memory_bytes(device_);
  }
  metrics.peak_rss_bytes = read_memory_stats().peak_rss_bytes;
}

void Trainer::report(const StepMetrics& metrics) {
  if (!writes_outputs()) return;
  Outputs& out = *outputs_;
  std::fprintf(out.metrics, "%s\n", metrics.to_json().c_str());
  std::fflush(out.metrics);
  if (out.tensorboard) {
    std::vector<std::pair<std::string, double>> scalars = {
        {"loss/train", metrics.loss},
        {"train/learning_rate", metrics.learning_rate},
        {"train/grad_norm", metrics.grad_norm},
        {"throughput/tokens_per_second", metrics.tokens_per_second},
        {"throughput/tflops", metrics.tflops},
        {"memory/peak_rss_gib", static_cast<double>(metrics.peak_rss_bytes) / (1024.0 * 1024 * 1024)},
        {"memory/peak_gpu_gib", static_cast<double>(metrics.peak_device_memory_bytes) / (1024.0 * 1024 * 1024)},
        {"memory/kv_state_mib", static_cast<double>(metrics.peak_kv_state_bytes) / (1024.0 * 1024)},
        {"parallel/dp_imbalance", metrics.dp_imbalance},
    };
    if (std::isfinite(metrics.pipeline_bubble)) {
      scalars.push_back({"parallel/pipeline_bubble", metrics.pipeline_bubble});
      scalars.push_back({"parallel/pipeline_bubble_simulated", metrics.pipeline_bubble_simulated});
    }
    if (std::isfinite(metrics.far_loss)) scalars.push_back({"loss/far_tokens", metrics.far_loss});
    if (std::isfinite(metrics.mfu)) scalars.push_back({"throughput/mfu", metrics.mfu});
    out.tensorboard->add_scalars(scalars, metrics.step);
  }
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - out.start).count();
  const int64_t remaining = config_.run.steps - metrics.step;
  const double eta = metrics.step > 0 ? elapsed / static_cast<double>(metrics.step) * static_cast<double>(remaining) : 0.0;
  const std::string far = std::isfinite(metrics.far_loss) ? core::format_fixed(metrics.far_loss, 4) : "-";
  const std::string status = core::str_cat(
      "loss ", core::format_fixed(metrics.loss, 4), " far ", far, " lr ", core::format_fixed(metrics.learning_rate * 1e3, 3),
      "e-3 gnorm ", core::format_fixed(metrics.grad_norm, 2), " | ", core::format_count(metrics.tokens_per_second),
      " tok/s ",
      std::isfinite(metrics.mfu) ? core::format_fixed(metrics.tflops, 1) + " TFLOP/s MFU " +
                                       core::format_fixed(metrics.mfu * 100, 1) + "%"
                                 : core::format_fixed(metrics.tflops * 1e3, 2) + " GFLOP/s",
      " | ", metrics.chunks, " chunks (", metrics.recomputed_chunks, " recomputed) | rss ",
      core::format_bytes(static_cast<double>(metrics.peak_rss_bytes)),
      device_.is_cuda() ? " gpu " + core::format_bytes(static_cast<double>(metrics.peak_device_memory_bytes))
                        : std::string(),
      mesh_ != nullptr && config_.parallel.dp > 1 ? " | dp imbalance " + core::format_fixed(metrics.dp_imbalance, 2)
                                                  : std::string(),
      std::isfinite(metrics.pipeline_bubble)
          ? " | bubble " + core::format_fixed(metrics.pipeline_bubble, 2) + " (sim " +
                core::format_fixed(metrics.pipeline_bubble_simulated, 2) + ")"
          : std::string(),
      " | ETA ", core::format_duration(eta));
  if (out.bar) {
    constexpr int kWidth = 20;
    const int filled = static_cast<int>(kWidth * metrics.step / std::max<int64_t>(config_.run.steps, 1));
    std::fprintf(stderr, "\r\033[2Kstep %lld/%lld [%s%s] %s", static_cast<long long>(metrics.step),
                 static_cast<long long>(config_.run.steps), std::string(static_cast<size_t>(filled), '#').c_str(),
                 std::string(static_cast<size_t>(kWidth - filled), '.').c_str(), status.c_str());
    if (metrics.step == config_.run.steps) std::fputc('\n', stderr);
    std::fflush(stderr);
  } else if (metrics.step % config_.logging.interval == 0 || metrics.step == config_.run.steps || metrics.step == 1) {
    core::log_info("step ", metrics.step, "/", config_.run.steps, " ", status);
  }
}

// <run_dir>/loss.svg from metrics.jsonl, so a resumed run's chart covers every step. The
// training's results are saved by then: a chart that cannot be drawn (an edited metrics file, a
// full disk) is a warning, not a failed run.
void Trainer::write_loss_chart() {
  std::fflush(outputs_->metrics);
  const std::string run_dir = config_.run.run_dir();
  try {
    const std::vector<LossCurvePoint> curves = read_loss_curves(run_dir + "/metrics.jsonl");
    core::write_file_atomic(run_dir + "/loss.svg",
                            loss_chart_svg(curves, "run " + config_.run.name + ": loss on near and far tokens"));
  } catch (const core::Error& error) {
    core::log_warn("loss chart not written: ", error.what());
  }
}

namespace {

enum class LossTokens { kAll, kFar, kNear };

size_t tenth_of(const std::vector<StepMetrics>& history) { return std::max<size_t>(1, history.size() / 10); }

// Token-weighted mean loss of all, far or near tokens over the first or the last tenth of
// `history`; NaN when that window has no such tokens. Steps with a non-finite loss are left out.
double tenth_mean_loss(const std::vector<StepMetrics>& history, bool first, LossTokens kind) {
  double sum = 0, count = 0;
  for (size_t i = 0; i < tenth_of(history); ++i) {
    const StepMetrics& metrics = history[first ? i : history.size() - 1 - i];
    const auto far = static_cast<double>(metrics.far_tokens), all = static_cast<double>(metrics.loss_tokens);
    const double far_sum = metrics.far_tokens > 0 ? metrics.far_loss * far : 0.0;
    if (!std::isfinite(metrics.loss) || !std::isfinite(far_sum)) continue;
    sum += kind == LossTokens::kAll   ? metrics.loss * all
           : kind == LossTokens::kFar ? far_sum
                                      : metrics.loss * all - far_sum;
    count += kind == LossTokens::kAll ? all : kind == LossTokens::kFar ? far : all - far;
  }
  return count > 0 ? sum / count : NAN;
}

}  // namespace

// The run in one line and in <run_dir>/summary.json: speed, and the loss and far-token loss at
// its start and end. Token-weighted means over the first and the last tenth of this invocation's
// steps: single steps are noisy (each global batch has its own mix of short and long sequences).
void Trainer::write_run_summary(const std::vector<StepMetrics>& history) const {
  double seconds = 0, tokens = 0;
  for (const auto& metrics : history) {
    seconds += metrics.seconds;
    tokens += static_cast<double>(metrics.tokens);
  }
  const auto shown = [](double value) { return std::isfinite(value) ? core::format_fixed(value, 4) : std::string("-"); };
  const double loss_start = tenth_mean_loss(history, true, LossTokens::kAll);
  const double loss_end = tenth_mean_loss(history, false, LossTokens::kAll);
  const double far_loss_start = tenth_mean_loss(history, true, LossTokens::kFar);
  const double far_loss_end = tenth_mean_loss(history, false, LossTokens::kFar);
  nlohmann::ordered_json summary;  // NaN is written as null
  summary["first_step"] = history.front().step;
  summary["last_step"] = history.back().step;
  summary["seconds"] = seconds;
  summary["tokens_per_second"] = tokens / seconds;
  summary["loss_start"] = loss_start;
  summary["loss_end"] = loss_end;
  summary["far_loss_start"] = far_loss_start;  // null when no step had far tokens
  summary["far_loss_end"] = far_loss_end;
  // Near tokens: targets inside their sequence's first chunk.
  summary["near_loss_start"] = tenth_mean_loss(history, true, LossTokens::kNear);
  summary["near_loss_end"] = tenth_mean_loss(history, false, LossTokens::kNear);
  summary["window_steps"] = tenth_of(history);
  core::write_file_atomic(config_.run.run_dir() + "/summary.json", summary.dump(2) + "\n");
  core::log_info("done: ", history.size(), " steps in ", core::format_duration(seconds), ", ",
                 core::format_count(tokens / seconds), " tokens/s; loss ", shown(loss_start), " -> ",
                 shown(loss_end), ", far-token loss ", shown(far_loss_start), " -> ", shown(far_loss_end),
                 " (means over the first and last tenth of the steps); outputs in ", config_.run.run_dir(),
                 " (metrics.jsonl, loss.svg, summary.json, tensorboard/, config.yaml)");
}

std::vector<StepMetrics> Trainer::train() {
  const std::string run_dir = config_.run.run_dir();
  if (!writes_outputs()) {
    std::vector<StepMetrics> history;
    while (steps_done_ < config_.run.steps) {
      history.push_back(next_step());
      after_step();
    }
    write_trace();
    return history;
  }
  claim_run_folder();
  core::make_directories(run_dir);
  configs::write_resolved_config(config_, run_dir + "/config.yaml");
  core::log_info("resolved config (saved to ", run_dir, "/config.yaml):\n", configs::to_yaml(config_));
  core::log_info("dataset ", config_.data.path, ": ", dataset_->size(), " sequences, ", dataset_->total_tokens(),
                 " tokens; model ", model_->parameters().size(), " tensors, ",
                 [&] {
                   int64_t count = 0;
                   for (const auto& parameter : model_->parameters()) count += parameter.numel();
                   return core::format_count(static_cast<double>(count));
                 }(),
                 " parameters; chunk_size ", config_.chunking.chunk_size, ", resident_chunks ",
                 config_.chunking.resident_chunks);

  outputs_ = std::make_unique<Outputs>();
  outputs_->start = std::chrono::steady_clock::now();
  const std::string metrics_path = run_dir + "/metrics.jsonl";
  // A resumed run continues the file: lines of steps after the checkpoint (written before the
  // interruption) are dropped so every step appears once.
  if (steps_done_ > 0 && core::path_exists(metrics_path)) truncate_metrics_after(metrics_path, steps_done_);
  outputs_->metrics = std::fopen(metrics_path.c_str(), steps_done_ == 0 ? "w" : "a");
  CF_CHECK(outputs_->metrics != nullptr, "cannot open '", metrics_path, "' for writing");
  if (config_.logging.tensorboard) outputs_->tensorboard = std::make_unique<TensorBoardWriter>(run_dir + "/tensorboard");
  const std::string& progress = config_.logging.progress;
  outputs_->bar = progress == "bar" || (progress == "auto" && ::isatty(STDERR_FILENO) == 1);

  std::vector<StepMetrics> history;
  while (steps_done_ < config_.run.steps) {
    history.push_back(next_step());
    report(history.back());
    after_step();
  }
  if (outputs_->tensorboard) outputs_->tensorboard->flush();
  write_trace();
  write_loss_chart();
  if (!history.empty()) write_run_summary(history);
  return history;
}

}  // namespace chunkflow::trainer
