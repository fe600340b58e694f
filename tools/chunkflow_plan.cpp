// chunkflow-plan --config run.yaml [--set key=value ...] [--length-histogram FILE] [--memory-budget 16G]
//                [--chunk-sizes 1024,2048] [--resident-chunks 1,2,4] [--steps N] [--calibration FILE]
//                [--json FILE]
// chunkflow-plan --config run.yaml --layouts RANKS [--longest TOKENS] [--memory-budget 80G] [--json FILE]
//
// With --layouts: every dp x cp x pp x tp layout of RANKS ranks (replicated and sharded AdamW) and
// the trainer's memory estimate of its fullest rank at the longest sequence; no calibration.
//
// Recommends chunking.chunk_size and chunking.resident_chunks for a run config: samples the run's
// first global batches (the trainer's sampler on data.path, or lengths drawn from a histogram),
// simulates every candidate with the schedule generator and a cost and memory model calibrated on
// this machine (trainer/step_planner.h), and prints predicted step time, tokens/s, bubble, fill,
// DP imbalance and peak memory per candidate; the fastest within the memory budget is recommended.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "configs/config_loader.h"
#include "core/command_line.h"
#include "core/error.h"
#include "core/file_io.h"
#include "core/logging.h"
#include "core/progress.h"
#include "core/strings.h"
#include "data/indexed_dataset.h"
#include "data/synthetic.h"
#include "models/hugging_face.h"
#include "models/transformer.h"
#include "trainer/memory_estimate.h"
#include "trainer/step_planner.h"

namespace {

using namespace chunkflow;

std::vector<int64_t> parse_int_list(const std::string& text, const std::string& what) {
  std::vector<int64_t> values;
  std::stringstream stream(text);
  for (std::string item; std::getline(stream, item, ',');) {
    const int64_t value = core::parse_int64(item, what);
    CF_CHECK(value >= 1, what, " values must be >= 1, got ", value);
    values.push_back(value);
  }
  CF_CHECK(!values.empty(), what, " must be a comma-separated list of integers, got '", text, "'");
  return values;
}

std::string shell_quote(const std::string& text) {
  std::string quoted = "'";
  for (const char c : text) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

// Runs this program again as `--memory-probe layers:tokens` (one process per measurement: memory
// freed in a process stays resident and would disturb the next measurement) and reads its line.
trainer::ChunkMemoryProbe run_memory_probe(const std::vector<std::string>& config_args, int64_t layers, int64_t tokens) {
  std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  // Relinked while running (a rebuild): the new binary at the same path does the same.
  if (self.ends_with(" (deleted)")) self.resize(self.size() - std::string(" (deleted)").size());
  std::string command = shell_quote(self);
  for (const std::string& arg : config_args) command += " " + shell_quote(arg);
  command += core::str_cat(" --memory-probe ", layers, ":", tokens, " 2>&1");
  FILE* pipe = popen(command.c_str(), "r");
  CF_CHECK(pipe != nullptr, "cannot start the memory probe: ", command);
  std::string output, last_line;
  char buffer[4096];
  while (fgets(buffer, sizeof(buffer), pipe) != nullptr) output += buffer;
  const int status = pclose(pipe);
  CF_CHECK(status == 0, "the memory probe (", layers, " layers, ", tokens, " tokens) failed:\n", output);
  std::istringstream lines(output);
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty() && line.front() == '{') last_line = line;
  }
  return trainer::ChunkMemoryProbe::from_json(last_line, "memory probe output");
}

std::string mib(int64_t bytes) { return core::format_fixed(static_cast<double>(bytes) / (1024.0 * 1024.0), 1); }

nlohmann::json prediction_json(const trainer::CandidatePrediction& p) {
  return {{"chunk_size", p.candidate.chunk_size},
          {"resident_chunks", p.candidate.resident_chunks},
          {"step_seconds", p.step_seconds},
          {"seconds_of_step", p.seconds_of_step},
          {"tokens_per_second", p.tokens_per_second},
          {"bubble_ratio", p.bubble_ratio},
          {"fill_ratio", p.fill_ratio},
          {"dp_imbalance", p.dp_imbalance},
          {"recompute_share", p.recompute_share},
          {"chunks", p.chunks},
          {"peak_memory_bytes", p.peak_memory.total_bytes()},
          {"memory",
           {{"runtime_bytes", p.peak_memory.runtime_bytes},
            {"model_state_bytes", p.peak_memory.model_state_bytes},
            {"activation_bytes", p.peak_memory.activation_bytes},
            {"kv_state_bytes", p.peak_memory.kv_state_bytes},
            {"kept_input_bytes", p.peak_memory.kept_input_bytes}}},
          {"within_budget", p.within_budget}};
}

// Timed chunk sizes when none are given: the smallest, a power of two near the geometric middle
// and the largest candidate, capped at 2048 tokens (the calibration stays short).
std::vector<int64_t> calibration_sizes(const std::vector<int64_t>& chunk_sizes) {
  const int64_t smallest = std::clamp<int64_t>(*std::min_element(chunk_sizes.begin(), chunk_sizes.end()), 16, 2048);
  const int64_t largest = std::clamp<int64_t>(*std::max_element(chunk_sizes.begin(), chunk_sizes.end()), 16, 2048);
  int64_t middle = 16;
  while (middle * middle < smallest * largest) middle *= 2;
  const std::set<int64_t> sizes = {smallest, std::clamp(middle, smallest, largest), largest};
  return {sizes.begin(), sizes.end()};
}

nlohmann::json layout_json(const trainer::LayoutMemory& entry, int64_t budget) {
  const trainer::RankMemoryEstimate& worst = entry.worst;
  return {{"dp", entry.parallel.dp}, {"cp", entry.parallel.cp}, {"pp", entry.parallel.pp}, {"tp", entry.parallel.tp},
          {"shard_optimizer", entry.parallel.shard_optimizer}, {"fullest_stage", entry.worst_stage},
          {"parameters", worst.parameters}, {"model_state_bytes", worst.model_state_bytes},
          {"kv_state_bytes", worst.kv_state_bytes}, {"activation_bytes", worst.activation_bytes},
          {"total_bytes", worst.total_bytes()}, {"fits", budget <= 0 || worst.total_bytes() <= budget}};
}

// --layouts: the memory of every layout of `ranks` ranks; exit 0 when one fits the budget, else 2.
int print_layouts(const configs::Config& config, const std::string& config_path, int64_t ranks, int64_t longest,
                  int64_t budget, const std::string& json_path) {
  const std::vector<trainer::LayoutMemory> table = trainer::layout_memory_table(config, ranks, longest);
  CF_CHECK(!table.empty(), "no dp x cp x pp x tp layout of ", ranks, " ranks suits ", config_path,
           " (pp <= model.num_hidden_layers, tp dividing heads, K/V heads, MLP and vocabulary)");
  std::printf("layouts of %lld ranks for %s: longest sequence %lld tokens, chunk_size %lld, resident_chunks %lld, "
              "model.dtype %s; the trainer's memory estimate of the fullest rank (runtime, allocator slack and "
              "communication buffers not included)\n",
              static_cast<long long>(ranks), config_path.c_str(), static_cast<long long>(longest),
              static_cast<long long>(config.chunking.chunk_size),
              static_cast<long long>(config.chunking.resident_chunks), config.model.dtype.c_str());
  std::printf("%4s %4s %4s %4s %8s %11s %12s %12s %12s %12s\n", "dp", "cp", "pp", "tp", "sharded", "parameters",
              "model state", "K/V state", "activations", "total");
  int fitting = 0;
  for (const trainer::LayoutMemory& entry : table) {
    const trainer::RankMemoryEstimate& worst = entry.worst;
    const bool fits = budget <= 0 || worst.total_bytes() <= budget;
    fitting += fits ? 1 : 0;
    std::printf("%4lld %4lld %4lld %4lld %8s %11s %12s %12s %12s %12s%s\n",
                static_cast<long long>(entry.parallel.dp), static_cast<long long>(entry.parallel.cp),
                static_cast<long long>(entry.parallel.pp), static_cast<long long>(entry.parallel.tp),
                entry.parallel.shard_optimizer ? "yes" : "no",
                core::format_count(static_cast<double>(worst.parameters)).c_str(),
                core::format_bytes(worst.model_state_bytes).c_str(), core::format_bytes(worst.kv_state_bytes).c_str(),
                core::format_bytes(worst.activation_bytes).c_str(), core::format_bytes(worst.total_bytes()).c_str(),
                budget > 0 && !fits ? "  over budget" : "");
  }
  if (budget > 0) {
    std::printf("%d of %zu layouts fit %s per rank\n", fitting, table.size(), core::format_bytes(budget).c_str());
  }
  if (!json_path.empty()) {
    nlohmann::json json = {{"config", config_path}, {"ranks", ranks}, {"longest_sequence", longest},
                           {"memory_budget_bytes", budget}, {"layouts", nlohmann::json::array()}};
    for (const auto& entry : table) json["layouts"].push_back(layout_json(entry, budget));
    if (json_path == "-") {
      std::printf("%s\n", json.dump(2).c_str());
    } else {
      core::write_file_atomic(json_path, json.dump(2) + "\n");
    }
  }
  return fitting > 0 ? 0 : 2;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string config_path, histogram_path, budget_text, chunk_sizes_text, resident_text = "1,2,4";
    std::string calibration_path, calibration_sizes_text, json_path, memory_probe;
    std::vector<std::string> overrides;
    int64_t steps = 20, histogram_sequences = 100000, layouts = 0, longest_override = 0;
    double calibration_seconds = 20;
    core::CommandLine command_line(
        "chunkflow-plan",
        "Recommends chunking.chunk_size and chunking.resident_chunks for a run config: simulates its first global "
        "batches with the pipeline schedule generator and a cost and memory model calibrated on this machine, and "
        "prints predicted step time, tokens/s, bubble, fill, DP imbalance and peak memory per candidate.");
    command_line.add_string("config", &config_path, "YAML run config (model, data, parallel, chunking)", true);
    command_line.add_repeated("set", &overrides, "override one key: --set parallel.pp=2");
    command_line.add_string("length-histogram", &histogram_path,
                            "sequence lengths from a histogram file (data/distributions/*.txt format) instead of data.path");
    command_line.add_int("histogram-sequences", &histogram_sequences,
                         "sequences drawn from --length-histogram (default 100000)");
    command_line.add_string("memory-budget", &budget_text, "per-rank memory limit, e.g. 16G (default: none)");
    command_line.add_string("chunk-sizes", &chunk_sizes_text,
                            "candidate chunk sizes, e.g. 512,1024,2048 (default: powers of two from 128 to the "
                            "longest sampled sequence, at most 8)");
    command_line.add_string("resident-chunks", &resident_text, "candidate resident_chunks values (default 1,2,4)");
    command_line.add_int("steps", &steps, "optimizer steps to sample and simulate (default 20)");
    command_line.add_string("calibration", &calibration_path,
                            "calibration JSON: loaded when it exists, else measured and saved there");
    command_line.add_double("calibration-seconds", &calibration_seconds, "time budget of the timed runs (default 20)");
    command_line.add_string("calibration-chunk-sizes", &calibration_sizes_text,
                            "chunk sizes timed by the calibration (default: smallest, middle and largest candidate, "
                            "at most 2048)");
    command_line.add_string("json", &json_path, "also write the predictions as JSON to this file ('-': stdout)");
    command_line.add_int("layouts", &layouts,
                         "list every dp x cp x pp x tp layout of this many ranks with its per-rank memory estimate "
                         "(replicated and sharded AdamW) instead of planning chunk sizes");
    command_line.add_int("longest", &longest_override,
                         "with --layouts: the longest sequence in tokens (default: the longest in the data)");
    command_line.add_string("memory-probe", &memory_probe,
                            "internal: LAYERS:TOKENS, measure one chunk's peak memory and print it as JSON");
    if (!command_line.parse(std::vector<std::string>(argv + 1, argv + argc))) return 0;

    // A histogram stands in for the dataset, so data.path need not name one.
    if (!histogram_path.empty()) overrides.push_back("data.path=" + histogram_path);
    configs::Config config = configs::load_config(config_path, overrides);
    // Fine-tuning from a Hugging Face directory: its config.json defines the architecture, as in
    // the trainer.
    if (!config.model.init_from.empty()) config.model = models::merge_hf_config(config.model);
    std::vector<std::string> config_args = {"--config", config_path};
    for (const std::string& override_text : overrides) {
      config_args.push_back("--set");
      config_args.push_back(override_text);
    }

    if (!memory_probe.empty()) {
      const size_t colon = memory_probe.find(':');
      CF_CHECK(colon != std::string::npos, "--memory-probe must be LAYERS:TOKENS, got '", memory_probe, "'");
      const trainer::ChunkMemoryProbe probe = trainer::probe_chunk_memory(
          config.model, core::parse_int64(memory_probe.substr(0, colon), "--memory-probe layers"),
          core::parse_int64(memory_probe.substr(colon + 1), "--memory-probe tokens"),
          static_cast<uint64_t>(config.run.seed));
      std::printf("%s\n", probe.to_json().c_str());
      return 0;
    }

    CF_CHECK(steps >= 1, "chunkflow-plan --steps must be >= 1, got ", steps);
    CF_CHECK(histogram_sequences >= 1, "chunkflow-plan --histogram-sequences must be >= 1, got ", histogram_sequences);
    CF_CHECK(calibration_seconds > 0, "chunkflow-plan --calibration-seconds must be > 0, got ", calibration_seconds);
    CF_CHECK(config.chunking.strategy == "chunkflow", "chunkflow-plan plans chunking.strategy = chunkflow, got ",
             config.chunking.strategy);
    models::pipeline_stage(config.model, 0, static_cast<int>(config.parallel.pp));  // checks layers >= stages
    const int64_t budget = budget_text.empty() ? 0 : trainer::parse_byte_size(budget_text, "--memory-budget");
    CF_CHECK(layouts >= 0 && longest_override >= 0, "chunkflow-plan --layouts and --longest must be positive, got ",
             layouts, " and ", longest_override);
    if (layouts > 0 && longest_override > 0) {
      return print_layouts(config, config_path, layouts, longest_override, budget, json_path);
    }

    // Sequence lengths, then the first global batches as the trainer samples them.
    std::vector<int32_t> lengths;
    std::string source;
    if (!histogram_path.empty()) {
      const data::LengthHistogram histogram = data::read_length_histogram(histogram_path);
      for (const int64_t length : data::sample_lengths(histogram, histogram_sequences, static_cast<uint64_t>(config.run.seed))) {
        lengths.push_back(static_cast<int32_t>(length));
      }
      source = core::str_cat(histogram_path, " (", histogram.bins.size(), " bins, ", histogram_sequences, " sequences drawn)");
    } else {
      const data::IndexedDataset dataset(config.data.path);
      lengths = dataset.lengths();
      source = core::str_cat(config.data.path, " (", lengths.size(), " sequences)");
    }
    if (layouts > 0) {  // the memory check the trainer makes at start-up: the dataset's longest sequence
      const int64_t longest = lengths.empty() ? 1 : *std::max_element(lengths.begin(), lengths.end());
      return print_layouts(config, config_path, layouts, longest, budget, json_path);
    }
    const trainer::StepLengths sampled = trainer::sample_step_lengths(lengths, config, steps);
    int64_t longest = 1, sampled_tokens = 0;
    for (const auto& step : sampled) {
      for (const auto& batch : step) {
        for (const int64_t length : batch) {
          longest = std::max(longest, length);
          sampled_tokens += length;
        }
      }
    }
    const std::vector<int64_t> chunk_sizes = chunk_sizes_text.empty() ? trainer::default_chunk_sizes(longest)
                                                                      : parse_int_list(chunk_sizes_text, "--chunk-sizes");
    const std::vector<int64_t> resident = parse_int_list(resident_text, "--resident-chunks");

    // Calibration: loaded, or measured (time in this process, memory in fresh ones) and saved.
    trainer::StepCostModel costs;
    const std::string shape = trainer::model_shape_key(config.model);
    if (!calibration_path.empty() && core::path_exists(calibration_path)) {
      costs = trainer::StepCostModel::from_json(core::read_file(calibration_path), calibration_path);
      CF_CHECK(costs.model_shape == shape, calibration_path, " was calibrated for model '", costs.model_shape,
               "', this config has '", shape, "'; delete it or name another --calibration file");
      if (costs.threads != torch::get_num_threads()) {
        core::log_warn(calibration_path, " was measured with ", costs.threads, " threads, this process has ",
                       torch::get_num_threads());
      }
      std::printf("calibration: loaded %s (%lld timed runs, %lld threads, fit rms error %.1f%%)\n",
                  calibration_path.c_str(), static_cast<long long>(costs.observations),
                  static_cast<long long>(costs.threads), 100.0 * costs.fit_relative_rms);
    } else {
      trainer::CalibrationOptions options;
      options.chunk_sizes = calibration_sizes_text.empty()
                                ? calibration_sizes(chunk_sizes)
                                : parse_int_list(calibration_sizes_text, "--calibration-chunk-sizes");
      options.seconds = calibration_seconds;
      options.seed = static_cast<uint64_t>(config.run.seed);
      std::vector<std::string> size_texts;
      for (const int64_t size : options.chunk_sizes) size_texts.push_back(std::to_string(size));
      core::log_info("calibrating on this machine (", torch::get_num_threads(), " threads): chunk sizes ",
                     core::join(size_texts, ","), ", about ", calibration_seconds, " s");
      costs = trainer::calibrate_time(config.model, options);
      const int64_t probe_large = options.chunk_sizes.back();
      const int64_t probe_small = std::max<int64_t>(2, probe_large / 4);
      std::vector<trainer::ChunkMemoryProbe> probes;
      for (const int64_t layers : {1, 2}) {
        for (const int64_t tokens : {probe_small, probe_large}) {
          probes.push_back(run_memory_probe(config_args, layers, tokens));
        }
      }
      trainer::fit_memory_model(probes, costs);
      if (!calibration_path.empty()) {
        const auto parent = std::filesystem::path(calibration_path).parent_path();
        if (!parent.empty()) core::make_directories(parent.string());
        core::write_file_atomic(calibration_path, costs.to_json());
      }
      std::printf("calibration: %lld timed runs + 4 memory probes in %.1f s, fit rms error %.1f%%%s\n",
                  static_cast<long long>(costs.observations), costs.measured_seconds, 100.0 * costs.fit_relative_rms,
                  calibration_path.empty() ? "" : (", saved to " + calibration_path).c_str());
    }
    const trainer::OpCost& f = costs.forward;
    const trainer::OpCost& b = costs.backward;
    std::printf("  forward:  per layer %.3g s/token + %.3g s/entry + %.3g s/op; head %.3g s/token + %.3g s/op\n",
                f.layer_token, f.layer_entry, f.layer_op, f.head_token, f.head_op);
    std::printf("  backward: per layer %.3g s/token + %.3g s/entry + %.3g s/op; head %.3g s/token + %.3g s/op\n",
                b.layer_token, b.layer_entry, b.layer_op, b.head_token, b.head_op);
    std::printf("  optimizer %.3g s + %.3g s/parameter; activations %.0f B/layer-token + %.0f B/head-token + %s MiB/chunk;"
                " runtime %s MiB\n",
                costs.optimizer_fixed, costs.optimizer_per_parameter, costs.activation_per_layer_token,
                costs.activation_per_head_token, mib(static_cast<int64_t>(costs.activation_per_chunk)).c_str(),
                mib(static_cast<int64_t>(costs.runtime_bytes)).c_str());
    std::printf("%s: %s; dp %lld x cp %lld x pp %lld; %lld steps sampled (%s tokens, longest %lld)\n",
                config_path.c_str(), source.c_str(), static_cast<long long>(config.parallel.dp),
                static_cast<long long>(config.parallel.cp), static_cast<long long>(config.parallel.pp),
                static_cast<long long>(steps), core::format_count(static_cast<double>(sampled_tokens)).c_str(),
                static_cast<long long>(longest));

    std::vector<trainer::CandidatePrediction> predictions;
    {
      core::Progress progress("simulating", static_cast<int64_t>(chunk_sizes.size() * resident.size()), "candidates");
      for (const int64_t chunk_size : chunk_sizes) {
        for (const int64_t resident_chunks : resident) {
          predictions.push_back(trainer::predict_candidate(config, sampled, costs, {chunk_size, resident_chunks}));
          progress.update(static_cast<int64_t>(predictions.size()));
        }
      }
      progress.finish();
    }
    const int best = trainer::recommend(predictions, budget);

    std::printf("%10s %8s %9s %10s %7s %6s %7s %9s %9s %9s %9s\n", "chunk_size", "resident", "step s", "tokens/s",
                "bubble", "fill", "dp imb", "recompute", "peak MiB", "activ MiB", "K/V MiB");
    for (size_t i = 0; i < predictions.size(); ++i) {
      const trainer::CandidatePrediction& p = predictions[i];
      const char* mark = static_cast<int>(i) == best ? "  <- recommended" : p.within_budget ? "" : "  over budget";
      std::printf("%10lld %8lld %9.4f %10.0f %7.3f %6.3f %7.3f %9.3f %9s %9s %9s%s\n",
                  static_cast<long long>(p.candidate.chunk_size), static_cast<long long>(p.candidate.resident_chunks),
                  p.step_seconds, p.tokens_per_second, p.bubble_ratio, p.fill_ratio, p.dp_imbalance, p.recompute_share,
                  mib(p.peak_memory.total_bytes()).c_str(), mib(p.peak_memory.activation_bytes).c_str(),
                  mib(p.peak_memory.kv_state_bytes).c_str(), mark);
    }
    if (best >= 0) {
      const trainer::CandidatePrediction& p = predictions[static_cast<size_t>(best)];
      std::printf("recommended: --set chunking.chunk_size=%lld --set chunking.resident_chunks=%lld (predicted %.4f s "
                  "per step, %.0f tokens/s, peak %s MiB per rank%s)\n",
                  static_cast<long long>(p.candidate.chunk_size), static_cast<long long>(p.candidate.resident_chunks),
                  p.step_seconds, p.tokens_per_second, mib(p.peak_memory.total_bytes()).c_str(),
                  budget > 0 ? (" of " + mib(budget) + " MiB").c_str() : "");
    } else {
      std::printf("no candidate fits in %s MiB per rank: try smaller chunk sizes or resident_chunks, more pipeline "
                  "stages, or a larger --memory-budget\n",
                  mib(budget).c_str());
    }

    if (!json_path.empty()) {
      nlohmann::json json;
      json["config"] = config_path;
      json["lengths"] = source;
      json["steps"] = steps;
      json["layout"] = {{"dp", config.parallel.dp}, {"cp", config.parallel.cp}, {"pp", config.parallel.pp}};
      json["memory_budget_bytes"] = budget;
      json["calibration"] = nlohmann::json::parse(costs.to_json());
      json["candidates"] = nlohmann::json::array();
      for (const auto& p : predictions) json["candidates"].push_back(prediction_json(p));
      json["recommended"] = best >= 0 ? prediction_json(predictions[static_cast<size_t>(best)]) : nlohmann::json();
      if (json_path == "-") {
        std::printf("%s\n", json.dump(2).c_str());
      } else {
        const auto parent = std::filesystem::path(json_path).parent_path();
        if (!parent.empty()) core::make_directories(parent.string());
        core::write_file_atomic(json_path, json.dump(2) + "\n");
      }
    }
    return best >= 0 ? 0 : 2;
  } catch (const core::Error& error) {
    core::log_error(error.what());
    return 1;
  }
}
