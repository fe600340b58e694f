// The step planner's cost and memory model, calibration and simulation; see step_planner.h.
#include "trainer/step_planner.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <sstream>

#include "core/error.h"
#include "core/file_io.h"
#include "core/progress.h"
#include "core/random.h"
#include "core/strings.h"
#include "data/chunk_inputs.h"
#include "data/chunk_plan.h"
#include "data/sampler.h"
#include "models/chunk_batch.h"
#include "models/transformer.h"
#include "trainer/chunk_scheduler.h"
#include "trainer/memory_estimate.h"
#include "trainer/memory_stats.h"
#include "trainer/trainer.h"

namespace chunkflow::trainer {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

std::string trim(const std::string& text) {
  const size_t first = text.find_first_not_of(" \t\r");
  if (first == std::string::npos) return "";
  return text.substr(first, text.find_last_not_of(" \t\r") - first + 1);
}

// Least squares min sum_i (rows_i . x - targets_i)^2 with x >= 0: solve on the active columns,
// drop the most negative coefficient, repeat (columns are scaled to unit norm for conditioning).
// Columns that are all zero get 0.
std::vector<double> nonnegative_least_squares(const std::vector<std::vector<double>>& rows,
                                              const std::vector<double>& targets) {
  CF_ASSERT(!rows.empty() && rows.size() == targets.size(), "least squares needs rows");
  const size_t columns = rows.front().size();
  std::vector<double> scale(columns, 0.0);
  for (const auto& row : rows) {
    for (size_t j = 0; j < columns; ++j) scale[j] += row[j] * row[j];
  }
  std::vector<bool> active(columns);
  for (size_t j = 0; j < columns; ++j) {
    scale[j] = std::sqrt(scale[j]);
    active[j] = scale[j] > 0;
  }
  std::vector<double> solution(columns, 0.0);
  while (true) {
    std::vector<size_t> index;
    for (size_t j = 0; j < columns; ++j) {
      if (active[j]) index.push_back(j);
    }
    std::fill(solution.begin(), solution.end(), 0.0);
    if (index.empty()) return solution;
    const size_t n = index.size();
    // Normal equations of the scaled problem, [A | b], with a tiny ridge against exact collinearity.
    std::vector<std::vector<double>> system(n, std::vector<double>(n + 1, 0.0));
    for (size_t r = 0; r < rows.size(); ++r) {
      for (size_t a = 0; a < n; ++a) {
        const double xa = rows[r][index[a]] / scale[index[a]];
        for (size_t b = 0; b < n; ++b) system[a][b] += xa * rows[r][index[b]] / scale[index[b]];
        system[a][n] += xa * targets[r];
      }
    }
    for (size_t a = 0; a < n; ++a) system[a][a] += 1e-12;
    for (size_t col = 0; col < n; ++col) {
      size_t pivot = col;
      for (size_t r = col + 1; r < n; ++r) {
        if (std::abs(system[r][col]) > std::abs(system[pivot][col])) pivot = r;
      }
      std::swap(system[col], system[pivot]);
      for (size_t r = 0; r < n; ++r) {
        if (r == col || system[col][col] == 0) continue;
        const double factor = system[r][col] / system[col][col];
        for (size_t c = col; c <= n; ++c) system[r][c] -= factor * system[col][c];
      }
    }
    size_t most_negative = n;
    for (size_t a = 0; a < n; ++a) {
      const double value = system[a][a] != 0 ? system[a][n] / system[a][a] / scale[index[a]] : 0.0;
      solution[index[a]] = value;
      if (value < 0 && (most_negative == n || value < solution[index[most_negative]])) most_negative = a;
    }
    if (most_negative == n) return solution;
    active[index[most_negative]] = false;
  }
}

// Causal score entries of a chunk (prefix included).
double chunk_entries(const data::ChunkPlan& plan, int32_t chunk) {
  double entries = 0;
  for (const data::Segment& segment : plan.segments_of(plan.chunks()[static_cast<size_t>(chunk)])) {
    entries += static_cast<double>(data::attention_entries(segment.length(), segment.prefix_len));
  }
  return entries;
}

// The ten regression features of one op on a single-stage model of `layers` layers: forward's
// (layers t, layers e, layers, t, 1), then backward's; a recomputing backward has both.
void add_op_features(std::vector<double>& row, const parallel::PipelineOp& op, double layers, double tokens,
                     double entries) {
  const double features[5] = {layers * tokens, layers * entries, layers, tokens, 1.0};
  const bool forward = op.kind == parallel::PipelineOp::Kind::kForward;
  for (size_t i = 0; i < 5; ++i) {
    if (forward || op.recompute) row[i] += features[i];
    if (!forward) row[5 + i] += features[i];
  }
}

OpCost op_cost_from(const std::vector<double>& x, size_t offset) {
  OpCost cost;
  cost.layer_token = x[offset];
  cost.layer_entry = x[offset + 1];
  cost.layer_op = x[offset + 2];
  cost.head_token = x[offset + 3];
  cost.head_op = x[offset + 4];
  return cost;
}

configs::ModelConfig with_depth(const configs::ModelConfig& model, int64_t layers) {
  configs::ModelConfig result = model;
  result.num_hidden_layers = layers;
  result.init_from.clear();
  return result;
}

std::vector<int32_t> random_tokens(int64_t count, int64_t vocab, core::Rng& rng) {
  std::vector<int32_t> tokens(static_cast<size_t>(count));
  for (auto& token : tokens) token = static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab)));
  return tokens;
}

// Runs every chunk of `plan` (sequences of the given lengths, random tokens) through `scheduler`.
LossTotals run_random_plan(ChunkScheduler& scheduler, const data::ChunkPlan& plan,
                           const std::vector<data::PlanSequence>& sequences, int64_t vocab, core::Rng& rng) {
  std::vector<std::vector<int32_t>> tokens;
  for (const auto& sequence : sequences) tokens.push_back(random_tokens(sequence.length, vocab, rng));
  const data::TokenReader reader = [&](int32_t sequence, int64_t begin, int64_t count, int32_t* out) {
    std::copy_n(tokens[static_cast<size_t>(sequence)].begin() + begin, count, out);
  };
  const ChunkBatchSource source = [&](int32_t chunk) {
    return models::make_chunk_batch(data::gather_chunk_inputs(plan, chunk, sequences, reader), torch::kCPU);
  };
  return scheduler.run_plan(plan, source, 1.0 / static_cast<double>(std::max<int64_t>(plan.loss_tokens(), 1)));
}

double json_double(const nlohmann::json& object, const char* key, const std::string& source_name) {
  CF_CHECK(object.contains(key) && object[key].is_number(), source_name, ": missing number \"", key,
           "\" (written by another version? delete it to calibrate again)");
  return object[key].get<double>();
}

}  // namespace

// ---- Sequence lengths -------------------------------------------------------------------------

StepLengths sample_step_lengths(const std::vector<int32_t>& dataset_lengths, const configs::Config& config,
                                int64_t steps) {
  data::GlobalBatchSampler sampler(dataset_lengths, config.data, static_cast<uint64_t>(config.run.seed));
  StepLengths result(static_cast<size_t>(steps));
  for (auto& step : result) {
    step.resize(static_cast<size_t>(config.optim.grad_accumulation));
    for (auto& batch : step) {
      for (const int64_t index : sampler.next().sequences) batch.push_back(dataset_lengths[static_cast<size_t>(index)]);
    }
  }
  return result;
}

// ---- Cost and memory model --------------------------------------------------------------------

double OpCost::seconds(int64_t layers, bool last_stage, double tokens, double attention_entries) const {
  const double per_layer = layer_token * tokens + layer_entry * attention_entries + layer_op;
  return static_cast<double>(layers) * per_layer + (last_stage ? head_token * tokens + head_op : 0.0);
}

parallel::GroupCostModel StepCostModel::group_cost_model(int64_t layers) const {
  parallel::GroupCostModel model;
  const double depth = static_cast<double>(layers);
  model.per_token = depth * (forward.layer_token + backward.layer_token) + forward.head_token + backward.head_token;
  model.per_attention_entry = depth * (forward.layer_entry + backward.layer_entry);
  // A model without a measurable token term still needs a positive one to balance by.
  if (model.per_token <= 0) model.per_token = 1e-12;
  return model;
}

std::string model_shape_key(const configs::ModelConfig& model) {
  return core::str_cat(model.family, " vocab ", model.vocab_size, " hidden ", model.hidden_size, " intermediate ",
                       model.intermediate_size, " heads ", model.num_attention_heads, " kv_heads ",
                       model.num_key_value_heads, " head_dim ", model.effective_head_dim(), " tied ",
                       model.tie_word_embeddings ? 1 : 0, " bias ", model.attention_bias ? 1 : 0, " ", model.dtype);
}

std::string StepCostModel::to_json() const {
  const auto op = [](const OpCost& cost) {
    return nlohmann::json{{"layer_token", cost.layer_token},
                          {"layer_entry", cost.layer_entry},
                          {"layer_op", cost.layer_op},
                          {"head_token", cost.head_token},
                          {"head_op", cost.head_op}};
  };
  nlohmann::json json;
  json["model_shape"] = model_shape;
  json["threads"] = threads;
  json["observations"] = observations;
  json["fit_relative_rms"] = fit_relative_rms;
  json["measured_seconds"] = measured_seconds;
  json["chunk_sizes"] = chunk_sizes;
  json["forward_seconds"] = op(forward);
  json["backward_seconds"] = op(backward);
  json["optimizer_fixed_seconds"] = optimizer_fixed;
  json["optimizer_seconds_per_parameter"] = optimizer_per_parameter;
  json["activation_bytes_per_layer_token"] = activation_per_layer_token;
  json["activation_bytes_per_head_token"] = activation_per_head_token;
  json["activation_bytes_per_chunk"] = activation_per_chunk;
  json["runtime_bytes"] = runtime_bytes;
  return json.dump(2) + "\n";
}

StepCostModel StepCostModel::from_json(const std::string& text, const std::string& source_name) {
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& error) {
    CF_FAIL(source_name, ": not a calibration file (", error.what(), ")");
  }
  CF_CHECK(json.is_object() && json.contains("model_shape") && json["model_shape"].is_string(), source_name,
           ": not a calibration file (no \"model_shape\")");
  const auto op = [&](const char* key) {
    CF_CHECK(json.contains(key) && json[key].is_object(), source_name, ": missing object \"", key, "\"");
    const nlohmann::json& object = json[key];
    const std::string where = core::str_cat(source_name, " ", key);
    OpCost cost;
    cost.layer_token = json_double(object, "layer_token", where);
    cost.layer_entry = json_double(object, "layer_entry", where);
    cost.layer_op = json_double(object, "layer_op", where);
    cost.head_token = json_double(object, "head_token", where);
    cost.head_op = json_double(object, "head_op", where);
    return cost;
  };
  StepCostModel costs;
  costs.model_shape = json["model_shape"].get<std::string>();
  costs.threads = static_cast<int64_t>(json_double(json, "threads", source_name));
  costs.observations = static_cast<int64_t>(json_double(json, "observations", source_name));
  costs.fit_relative_rms = json_double(json, "fit_relative_rms", source_name);
  costs.measured_seconds = json_double(json, "measured_seconds", source_name);
  if (json.contains("chunk_sizes") && json["chunk_sizes"].is_array()) {
    costs.chunk_sizes = json["chunk_sizes"].get<std::vector<int64_t>>();
  }
  costs.forward = op("forward_seconds");
  costs.backward = op("backward_seconds");
  costs.optimizer_fixed = json_double(json, "optimizer_fixed_seconds", source_name);
  costs.optimizer_per_parameter = json_double(json, "optimizer_seconds_per_parameter", source_name);
  costs.activation_per_layer_token = json_double(json, "activation_bytes_per_layer_token", source_name);
  costs.activation_per_head_token = json_double(json, "activation_bytes_per_head_token", source_name);
  costs.activation_per_chunk = json_double(json, "activation_bytes_per_chunk", source_name);
  costs.runtime_bytes = json_double(json, "runtime_bytes", source_name);
  return costs;
}

StepCostModel calibrate_time(const configs::ModelConfig& model, const CalibrationOptions& options) {
  CF_CHECK(!options.chunk_sizes.empty(), "calibration needs at least one chunk size");
  for (const int64_t size : options.chunk_sizes) CF_CHECK(size >= 2, "calibration chunk sizes must be >= 2, got ", size);
  const auto start = Clock::now();
  StepCostModel costs;
  costs.model_shape = model_shape_key(model);
  costs.threads = torch::get_num_threads();
  costs.chunk_sizes = options.chunk_sizes;
  core::Rng rng(options.seed);

  struct Depth {
    int64_t layers;
    models::CausalLM model{nullptr};
  };
  std::vector<Depth> depths = {{1}, {2}};
  for (Depth& depth : depths) {
    torch::manual_seed(options.seed + static_cast<uint64_t>(depth.layers));
    depth.model = models::CausalLM(with_depth(model, depth.layers));
  }

  // One timed run: a plan of one group (a standalone chunk or one split sequence).
  struct Run {
    std::vector<int64_t> lengths;
    int64_t chunk_size, resident_chunks;
  };
  std::vector<Run> runs;
  for (const int64_t size : options.chunk_sizes) {
    const int64_t short_length = std::max<int64_t>(2, std::min<int64_t>(32, size / 8));
    runs.push_back({{size}, size, 1});  // one causal sequence filling the chunk
    runs.push_back({std::vector<int64_t>(static_cast<size_t>(size / short_length), short_length), size, 1});  // packed
    runs.push_back({{2 * size}, size, 1});  // split, the first piece recomputed
    runs.push_back({{2 * size}, size, 2});  // split, both pieces resident
  }
  std::vector<std::vector<double>> rows;
  const auto time_run = [&](Depth& depth, const Run& run, bool record) {
    std::vector<data::PlanSequence> sequences;
    for (const int64_t length : run.lengths) sequences.push_back({length, {}});
    const data::ChunkPlan plan = data::build_chunk_plan(sequences, run.chunk_size);
    ChunkScheduler scheduler(depth.model, run.resident_chunks);
    const LossTotals totals = run_random_plan(scheduler, plan, sequences, model.vocab_size, rng);
    if (!record) return;
    std::vector<int32_t> groups(plan.groups().size());
    for (size_t g = 0; g < groups.size(); ++g) groups[g] = static_cast<int32_t>(g);
    const auto schedule = parallel::pipeline_schedule(plan, groups, run.resident_chunks, 1);
    std::vector<double> row(10, 0.0);
    for (const parallel::PipelineOp& op : schedule.front()) {
      add_op_features(row, op, static_cast<double>(depth.layers),
                      static_cast<double>(plan.chunks()[static_cast<size_t>(op.chunk)].tokens),
                      chunk_entries(plan, op.chunk));
    }
    // Divided by the measured seconds (target 1): the fit minimizes relative error, so small
    // chunks count as much as large ones.
    for (double& value : row) value /= std::max(totals.busy_seconds, 1e-6);
    rows.push_back(row);
  };

  // Warm-up (first-touch allocations, dispatch caches), not recorded.
  for (Depth& depth : depths) {
    for (const Run& run : runs) {
      if (run.chunk_size == options.chunk_sizes.front()) time_run(depth, run, false);
    }
  }
  // One pass over every run is needed to separate the terms; more passes while the budget lasts.
  std::unique_ptr<core::Progress> progress;
  const int64_t runs_per_pass = static_cast<int64_t>(depths.size() * runs.size());
  if (options.progress) progress = std::make_unique<core::Progress>("calibration pass 1", runs_per_pass, "runs");
  const auto timed_start = Clock::now();
  while (true) {
    const auto pass_start = Clock::now();
    for (Depth& depth : depths) {
      for (const Run& run : runs) {
        time_run(depth, run, true);
        if (progress) progress->update(static_cast<int64_t>(rows.size()));
      }
    }
    if (progress) {
      progress->finish();
      progress.reset();
    }
    if (seconds_since(timed_start) + seconds_since(pass_start) > options.seconds) break;
  }
  // Only the extra forward of a recomputed piece (resident_chunks 1 vs 2) tells forward from
  // backward costs: every other forward column equals a backward one. Under timing noise the
  // fit may then put a whole term on one side (a forward pass of 0 s). A prior row per term pulls
  // the backward coefficient towards twice the forward one (the FLOP ratio of a backward pass),
  // weighted like one observation of the term's typical size: it settles the split where the
  // measurements cannot and barely moves the fitted totals.
  const size_t observed = rows.size();
  std::vector<double> targets(observed, 1.0);
  for (size_t term = 0; term < 5; ++term) {
    double magnitude = 0;
    for (size_t index = 0; index < observed; ++index) magnitude += rows[index][term] + rows[index][5 + term];
    magnitude /= 2.0 * static_cast<double>(observed);
    if (!(magnitude > 0)) continue;
    std::vector<double> prior(10, 0.0);
    prior[term] = -2.0 * magnitude;
    prior[5 + term] = magnitude;
    rows.push_back(std::move(prior));
    targets.push_back(0.0);
  }
  const std::vector<double> x = nonnegative_least_squares(rows, targets);
  costs.forward = op_cost_from(x, 0);
  costs.backward = op_cost_from(x, 5);
  double squares = 0;
  for (size_t index = 0; index < observed; ++index) {
    double fitted = 0;
    for (size_t j = 0; j < x.size(); ++j) fitted += rows[index][j] * x[j];
    squares += (fitted - 1.0) * (fitted - 1.0);
  }
  costs.observations = static_cast<int64_t>(observed);
  costs.fit_relative_rms = std::sqrt(squares / static_cast<double>(observed));

  // Optimizer: clip + AdamW step at each depth (the runs left gradients), median of 5.
  std::vector<std::pair<double, double>> optimizer_points;  // (parameters, seconds)
  for (Depth& depth : depths) {
    const configs::OptimConfig optim;
    auto optimizer = make_optimizer(depth.model, optim);
    std::vector<double> times;
    for (int repeat = 0; repeat < 5; ++repeat) {
      const auto step_start = Clock::now();
      clip_gradients(depth.model, optim.max_grad_norm);
      optimizer->step();
      times.push_back(seconds_since(step_start));
    }
    std::sort(times.begin(), times.end());
    int64_t parameters = 0;
    for (const auto& parameter : depth.model->parameters()) parameters += parameter.numel();
    optimizer_points.push_back({static_cast<double>(parameters), times[times.size() / 2]});
  }
  const auto [p1, t1] = optimizer_points[0];
  const auto [p2, t2] = optimizer_points[1];
  costs.optimizer_per_parameter = (t2 - t1) / (p2 - p1);
  costs.optimizer_fixed = t1 - costs.optimizer_per_parameter * p1;
  if (costs.optimizer_per_parameter <= 0 || costs.optimizer_fixed < 0) {
    // Noise hid the difference between the depths: time proportional to parameters.
    costs.optimizer_per_parameter = (t1 + t2) / (p1 + p2);
    costs.optimizer_fixed = 0;
  }
  costs.measured_seconds = seconds_since(start);
  return costs;
}

std::string ChunkMemoryProbe::to_json() const {
  return nlohmann::json{{"layers", layers},
                        {"tokens", tokens},
                        {"runtime_bytes", runtime_bytes},
                        {"chunk_peak_bytes", chunk_peak_bytes}}
      .dump();
}

ChunkMemoryProbe ChunkMemoryProbe::from_json(const std::string& text, const std::string& source_name) {
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& error) {
    CF_FAIL(source_name, ": not a memory probe result (", error.what(), "): ", text);
  }
  ChunkMemoryProbe probe;
  probe.layers = static_cast<int64_t>(json_double(json, "layers", source_name));
  probe.tokens = static_cast<int64_t>(json_double(json, "tokens", source_name));
  probe.runtime_bytes = static_cast<int64_t>(json_double(json, "runtime_bytes", source_name));
  probe.chunk_peak_bytes = static_cast<int64_t>(json_double(json, "chunk_peak_bytes", source_name));
  return probe;
}

ChunkMemoryProbe probe_chunk_memory(const configs::ModelConfig& model, int64_t layers, int64_t tokens, uint64_t seed) {
  CF_CHECK(layers >= 1 && tokens >= 2, "memory probe needs layers >= 1 and tokens >= 2, got ", layers, " and ", tokens);
  ChunkMemoryProbe probe;
  probe.layers = layers;
  probe.tokens = tokens;
  probe.runtime_bytes = read_memory_stats().current_rss_bytes;
  torch::manual_seed(seed);
  models::CausalLM network(with_depth(model, layers));
  core::Rng rng(seed);
  ChunkScheduler scheduler(network, 1);
  {
    // Warm-up: allocates the gradients, which later backwards accumulate into in place.
    const std::vector<data::PlanSequence> warm_up = {{8, {}}};
    run_random_plan(scheduler, data::build_chunk_plan(warm_up, 8), warm_up, model.vocab_size, rng);
  }
  const std::vector<data::PlanSequence> sequences = {{tokens, {}}};
  const data::ChunkPlan plan = data::build_chunk_plan(sequences, tokens);
  const int64_t before = read_memory_stats().current_rss_bytes;
  reset_peak_rss();
  run_random_plan(scheduler, plan, sequences, model.vocab_size, rng);
  probe.chunk_peak_bytes = std::max<int64_t>(0, read_memory_stats().peak_rss_bytes - before);
  return probe;
}

void fit_memory_model(std::span<const ChunkMemoryProbe> probes, StepCostModel& costs) {
  CF_CHECK(!probes.empty(), "the memory model needs probes");
  std::vector<std::vector<double>> rows;
  std::vector<double> targets;
  double runtime = 0;
  for (const ChunkMemoryProbe& probe : probes) {
    const double tokens = static_cast<double>(probe.tokens);
    rows.push_back({static_cast<double>(probe.layers) * tokens, tokens, 1.0});
    targets.push_back(static_cast<double>(probe.chunk_peak_bytes));
    runtime += static_cast<double>(probe.runtime_bytes);
  }
  const std::vector<double> x = nonnegative_least_squares(rows, targets);
  costs.activation_per_layer_token = x[0];
  costs.activation_per_head_token = x[1];
  costs.activation_per_chunk = x[2];
  costs.runtime_bytes = runtime / static_cast<double>(probes.size());
}

// ---- Memory of a stage ------------------------------------------------------------------------

int64_t MemoryEstimate::total_bytes() const {
  return runtime_bytes + model_state_bytes + activation_bytes + kv_state_bytes + kept_input_bytes;
}

int64_t stage_parameter_count(const configs::ModelConfig& model, int stage, int stages, int64_t tp) {
  const models::ModelStage part = models::pipeline_stage(model, stage, stages);
  const int64_t hidden = model.hidden_size;
  const int64_t q_width = model.num_attention_heads * model.effective_head_dim();
  const int64_t kv_width = model.num_key_value_heads * model.effective_head_dim();
  // Split over tp ranks: projections (and q/k/v biases), embeddings; whole on each: norms, o_proj's bias.
  int64_t split = hidden * q_width + 2 * hidden * kv_width + q_width * hidden + 3 * hidden * model.intermediate_size;
  int64_t whole = 2 * hidden;
  // Llama's attention_bias covers o_proj too; Qwen2 has q/k/v biases only (models/transformer.cpp).
  if (model.attention_bias) {
    split += q_width + 2 * kv_width;
    whole += model.family == "llama" ? hidden : 0;
  }
  int64_t count = (part.end_layer - part.first_layer) * (split / tp + whole);
  const int64_t embedding = model.vocab_size * hidden / tp;
  if (part.input_embedding || (part.output_head && model.tie_word_embeddings)) count += embedding;
  if (part.output_head) count += hidden + (model.tie_word_embeddings ? 0 : embedding);
  return count;
}

MemoryEstimate stage_memory(const configs::Config& config, const StepCostModel& costs, const data::ChunkPlan& plan,
                            const std::vector<parallel::PipelineOp>& schedule, int stage) {
  const configs::ModelConfig& model = config.model;
  const int stages = static_cast<int>(config.parallel.pp);
  const models::ModelStage part = models::pipeline_stage(model, stage, stages);
  const int64_t layers = part.end_layer - part.first_layer;
  const int64_t bytes = compute_bytes(model);
  const double cp = static_cast<double>(config.parallel.cp);
  MemoryEstimate estimate;
  estimate.runtime_bytes = static_cast<int64_t>(costs.runtime_bytes);
  // Parameters, gradients, AdamW's two moments, the compute copy under mixed precision, and the
  // flat all-reduce buckets over dp x cp.
  estimate.model_state_bytes = static_cast<int64_t>(std::ceil(
      model_state_bytes_per_parameter(config) * static_cast<double>(stage_parameter_count(model, stage, stages))));

  const auto activation = [&](int64_t tokens) {
    const double rows = static_cast<double>(tokens) / cp;  // a cp rank holds its share of the rows
    return static_cast<int64_t>(costs.activation_per_layer_token * static_cast<double>(layers) * rows +
                                (part.output_head ? costs.activation_per_head_token * rows : 0.0) +
                                costs.activation_per_chunk);
  };
  // Every cp rank holds the whole gathered prefix (docs/parallelism.md), with its accumulators.
  const int64_t state_row_bytes = kv_state_bytes_per_row(model, layers);
  int64_t live_activation = 0, live_state = 0, live_inputs = 0;
  std::map<int32_t, int64_t> backwards_left;  // split group -> its backwards still to run here
  const auto note_peak = [&](int64_t transient_activation) {
    const int64_t total = live_activation + transient_activation + live_state + live_inputs;
    if (total > estimate.activation_bytes + estimate.kv_state_bytes + estimate.kept_input_bytes) {
      estimate.activation_bytes = live_activation + transient_activation;
      estimate.kv_state_bytes = live_state;
      estimate.kept_input_bytes = live_inputs;
    }
  };
  for (const parallel::PipelineOp& op : schedule) {
    const data::Chunk& chunk = plan.chunks()[static_cast<size_t>(op.chunk)];
    const data::ChunkGroup& group = plan.groups()[static_cast<size_t>(op.group)];
    const bool split = group.split_sequence >= 0;
    // Stages after the first keep the input of a chunk forwarded without activations.
    const int64_t input_bytes =
        stage > 0 ? static_cast<int64_t>(static_cast<double>(chunk.tokens) / cp) * model.hidden_size * bytes : 0;
    if (op.kind == parallel::PipelineOp::Kind::kForward) {
      if (split && !backwards_left.contains(op.group)) {
        backwards_left[op.group] = group.chunk_count;
        live_state += group.chunk_count * plan.chunk_size() * state_row_bytes;
      }
      if (op.keep_activations) {
        live_activation += activation(chunk.tokens);
      } else {
        live_inputs += input_bytes;
      }
      note_peak(0);
      continue;
    }
    if (op.recompute) {
      note_peak(activation(chunk.tokens));
      live_inputs -= input_bytes;
    } else {
      note_peak(0);
      live_activation -= activation(chunk.tokens);
    }
    if (split && --backwards_left[op.group] == 0) {
      live_state -= group.chunk_count * plan.chunk_size() * state_row_bytes;
      backwards_left.erase(op.group);
    }
  }
  return estimate;
}

// ---- Simulation and recommendation ------------------------------------------------------------

CandidatePrediction predict_candidate(const configs::Config& config, const StepLengths& steps,
                                      const StepCostModel& costs, const Candidate& candidate) {
  CF_CHECK(candidate.chunk_size >= 1, "chunk sizes must be >= 1, got ", candidate.chunk_size);
  CF_CHECK(candidate.resident_chunks >= 1, "resident_chunks must be >= 1, got ", candidate.resident_chunks);
  CF_CHECK(!steps.empty(), "the planner needs at least one sampled step");
  // Its costs and memory probes are measured on one process; tensor parallelism's split layers and
  // per-layer sums are not modelled yet.
  CF_CHECK(config.parallel.tp == 1, "chunkflow-plan does not model tensor parallelism yet (parallel.tp = ",
           config.parallel.tp, "); plan with parallel.tp = 1: the trainer's memory estimate at start-up covers tp");
  const configs::ModelConfig& model = config.model;
  const int stages = static_cast<int>(config.parallel.pp), dp = static_cast<int>(config.parallel.dp);
  const double cp = static_cast<double>(config.parallel.cp);
  std::vector<int64_t> stage_layers(static_cast<size_t>(stages));
  double optimizer_seconds = 0;
  for (int s = 0; s < stages; ++s) {
    const models::ModelStage part = models::pipeline_stage(model, s, stages);
    stage_layers[static_cast<size_t>(s)] = part.end_layer - part.first_layer;
    const double parameters = static_cast<double>(stage_parameter_count(model, s, stages));
    optimizer_seconds = std::max(optimizer_seconds, costs.optimizer_fixed + costs.optimizer_per_parameter * parameters);
  }
  const parallel::GroupCostModel group_costs = costs.group_cost_model(model.num_hidden_layers);

  CandidatePrediction prediction;
  prediction.candidate = candidate;
  double total_seconds = 0, bubble_sum = 0, imbalance_sum = 0, capacity = 0;
  int64_t real_tokens = 0, recomputes = 0, batches = 0;
  for (const auto& step : steps) {
    // DP ranks do not wait for each other between the step's global batches, only at its end.
    std::vector<double> rank_seconds(static_cast<size_t>(dp), 0.0);
    for (const auto& lengths : step) {
      std::vector<data::PlanSequence> sequences;
      for (const int64_t length : lengths) sequences.push_back({length, {}});
      const data::ChunkPlan plan =
          data::build_chunk_plan(sequences, candidate.chunk_size, config.chunking.pack_into_tail);
      std::vector<double> entries(plan.chunks().size());
      for (size_t c = 0; c < entries.size(); ++c) entries[c] = chunk_entries(plan, static_cast<int32_t>(c));
      const auto op_seconds = [&](int stage, const parallel::PipelineOp& op) {
        // cp ranks split every chunk's rows and score entries evenly (communication not modelled).
        const double tokens = static_cast<double>(plan.chunks()[static_cast<size_t>(op.chunk)].tokens) / cp;
        const double entry_count = entries[static_cast<size_t>(op.chunk)] / cp;
        const int64_t layers = stage_layers[static_cast<size_t>(stage)];
        const bool last = stage == stages - 1;
        const double forward = costs.forward.seconds(layers, last, tokens, entry_count);
        if (op.kind == parallel::PipelineOp::Kind::kForward) return forward;
        const double backward = costs.backward.seconds(layers, last, tokens, entry_count);
        return op.recompute ? forward + backward : backward;
      };
      const parallel::DpAssignment assignment = parallel::balance_chunk_groups(plan, dp, group_costs);
      double slowest = -1, bubble = 0;
      for (int rank = 0; rank < dp; ++rank) {
        const auto schedule = parallel::pipeline_schedule(plan, assignment.groups_of_rank[static_cast<size_t>(rank)],
                                                          candidate.resident_chunks, stages,
                                                          config.parallel.pipeline_extra_in_flight);
        const parallel::PipelineSimulation simulation = parallel::simulate_pipeline(schedule, op_seconds);
        rank_seconds[static_cast<size_t>(rank)] += simulation.step_seconds;
        if (simulation.step_seconds > slowest) {
          slowest = simulation.step_seconds;
          bubble = simulation.bubble_ratio;
        }
        for (int s = 0; s < stages; ++s) {
          const MemoryEstimate memory = stage_memory(config, costs, plan, schedule[static_cast<size_t>(s)], s);
          if (memory.total_bytes() > prediction.peak_memory.total_bytes()) prediction.peak_memory = memory;
        }
        for (const parallel::PipelineOp& op : schedule.front()) recomputes += op.recompute ? 1 : 0;
      }
      bubble_sum += bubble;
      imbalance_sum += assignment.imbalance();
      real_tokens += plan.total_tokens();
      capacity += static_cast<double>(plan.chunks().size()) * static_cast<double>(candidate.chunk_size);
      prediction.chunks += static_cast<int64_t>(plan.chunks().size());
      ++batches;
    }
    prediction.seconds_of_step.push_back(*std::max_element(rank_seconds.begin(), rank_seconds.end()) +
                                         optimizer_seconds);
    total_seconds += prediction.seconds_of_step.back();
  }
  prediction.step_seconds = total_seconds / static_cast<double>(steps.size());
  prediction.tokens_per_second = total_seconds > 0 ? static_cast<double>(real_tokens) / total_seconds : 0.0;
  prediction.bubble_ratio = bubble_sum / static_cast<double>(batches);
  prediction.dp_imbalance = imbalance_sum / static_cast<double>(batches);
  prediction.fill_ratio = capacity > 0 ? static_cast<double>(real_tokens) / capacity : 0.0;
  prediction.recompute_share =
      prediction.chunks > 0 ? static_cast<double>(recomputes) / static_cast<double>(prediction.chunks) : 0.0;
  return prediction;
}

int recommend(std::vector<CandidatePrediction>& predictions, int64_t memory_budget_bytes, double tie_tolerance) {
  double fastest = std::numeric_limits<double>::infinity();
  for (CandidatePrediction& prediction : predictions) {
    prediction.within_budget = memory_budget_bytes <= 0 || prediction.peak_memory.total_bytes() <= memory_budget_bytes;
    if (prediction.within_budget) fastest = std::min(fastest, prediction.step_seconds);
  }
  int best = -1;
  for (size_t i = 0; i < predictions.size(); ++i) {
    const CandidatePrediction& prediction = predictions[i];
    if (!prediction.within_budget || prediction.step_seconds > fastest * (1.0 + tie_tolerance)) continue;
    if (best < 0 ||
        prediction.peak_memory.total_bytes() < predictions[static_cast<size_t>(best)].peak_memory.total_bytes()) {
      best = static_cast<int>(i);
    }
  }
  return best;
}

std::vector<int64_t> default_chunk_sizes(int64_t longest_sequence, int max_count) {
  std::vector<int64_t> sizes;
  int64_t size = 128;
  sizes.push_back(size);
  while (size < longest_sequence) sizes.push_back(size *= 2);
  if (static_cast<int>(sizes.size()) > max_count) sizes.erase(sizes.begin(), sizes.end() - max_count);
  return sizes;
}

int64_t parse_byte_size(const std::string& text, const std::string& what) {
  std::string number = trim(text);
  const auto fail = [&]() {
    CF_FAIL(what, " must be a size in bytes like 512M or 16G (K, M, G, T = powers of 1024), got '", text, "'");
  };
  // K, M, G, T, optionally followed by "iB" or "B" (any case).
  std::string lower = number;
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (const std::string tail : {"ib", "b"}) {
    if (lower.size() > tail.size() && lower.ends_with(tail) &&
        std::string("kmgt").find(lower[lower.size() - tail.size() - 1]) != std::string::npos) {
      number.resize(number.size() - tail.size());
      break;
    }
  }
  double multiplier = 1;
  if (!number.empty()) {
    const char unit_letter = static_cast<char>(std::toupper(static_cast<unsigned char>(number.back())));
    const std::string units = "KMGT";
    if (const size_t unit = units.find(unit_letter); unit != std::string::npos) {
      multiplier = std::pow(1024.0, static_cast<double>(unit + 1));
      number.pop_back();
    }
  }
  if (number.empty()) fail();
  double value = 0;
  try {
    value = core::parse_double(number, what);
  } catch (const core::Error&) {
    fail();
  }
  if (!(value > 0) || !std::isfinite(value)) fail();
  return static_cast<int64_t>(value * multiplier);
}

}  // namespace chunkflow::trainer
