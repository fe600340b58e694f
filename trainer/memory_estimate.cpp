// See memory_estimate.h for the equations.
#include "trainer/memory_estimate.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "configs/config_error.h"
#include "core/error.h"
#include "core/file_io.h"
#include "core/strings.h"
#include "models/mixed_precision.h"
#include "models/transformer.h"
#include "trainer/step_planner.h"

#ifdef CHUNKFLOW_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace chunkflow::trainer {
namespace {

bool mixed_precision(const configs::ModelConfig& model) { return model.dtype != "float32"; }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// "MemTotal:  24576 kB" -> bytes, from /proc/meminfo.
int64_t meminfo_bytes(const std::string& text, const std::string& field) {
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind(field + ":", 0) != 0) continue;
    std::istringstream value(line.substr(field.size() + 1));
    int64_t kib = -1;
    value >> kib;
    CF_CHECK(kib >= 0, "/proc/meminfo: cannot read ", field, " from '", line, "'");
    return kib * 1024;
  }
  CF_FAIL("/proc/meminfo has no ", field, " line");
}

}  // namespace

// The project's one dtype mapper (models/mixed_precision.h) decides the compute dtype's size.
int64_t compute_bytes(const configs::ModelConfig& model) {
  return static_cast<int64_t>(c10::elementSize(models::parse_dtype(model.dtype, "model.dtype")));
}

double model_state_bytes_per_parameter(const configs::Config& config) {
  const int64_t stage_ranks = config.parallel.dp * config.parallel.cp;
  const double weights_and_gradients = 4 + 4 + (mixed_precision(config.model) ? compute_bytes(config.model) : 0);
  if (config.parallel.shard_optimizer) {
    // Moments, master slice and gradient slice: 16 bytes over the stage's ranks.
    return weights_and_gradients + 16.0 / static_cast<double>(stage_ranks);
  }
  return weights_and_gradients + 8 + (stage_ranks > 1 ? 4 : 0);
}

int64_t kv_state_bytes_per_row(const configs::ModelConfig& model, int64_t layers, int64_t tp) {
  // K and V in the compute dtype, their gradient accumulators in float32 (trainer/kv_state_store.h).
  return layers * 2 * (model.num_key_value_heads / tp) * model.effective_head_dim() * (compute_bytes(model) + 4);
}

int64_t activation_bytes_per_layer_token(const configs::ModelConfig& model, int64_t tp, bool sequence_parallel) {
  const int64_t head_dim = model.effective_head_dim();
  const int64_t q_width = model.num_attention_heads * head_dim, kv_width = model.num_key_value_heads * head_dim;
  // Norm inputs (the residual stream) are split by rows under sequence parallelism; their outputs
  // are kept whole (gathered) by the projections.
  const int64_t residual_share = sequence_parallel ? tp : 1;
  return compute_bytes(model) * (2 * model.hidden_size / residual_share + 2 * model.hidden_size +
                                 (2 * q_width + 2 * kv_width + 3 * model.intermediate_size) / tp) +
         4 * (model.num_attention_heads / tp + 2);
}

int64_t activation_bytes_per_head_token(const configs::ModelConfig& model) {
  return compute_bytes(model) * 2 * model.hidden_size + 4 * 4;
}

RankMemoryEstimate estimate_rank_memory(const configs::Config& config, int stage, int64_t longest_sequence) {
  const configs::ModelConfig& model = config.model;
  const int stages = static_cast<int>(config.parallel.pp);
  const models::ModelStage part = models::pipeline_stage(model, stage, stages);
  const int64_t layers = part.end_layer - part.first_layer;
  RankMemoryEstimate estimate;
  const int64_t tp = config.parallel.tp;
  estimate.parameters = stage_parameter_count(model, stage, stages, tp);
  estimate.model_state_bytes =
      static_cast<int64_t>(std::ceil(static_cast<double>(estimate.parameters) * model_state_bytes_per_parameter(config)));

  const configs::ChunkingConfig& chunking = config.chunking;
  const int64_t chunk_size = chunking.chunk_size;
  if (chunking.strategy == "chunkflow" && longest_sequence > chunk_size) {
    const int64_t rows = ceil_div(longest_sequence, chunk_size) * chunk_size;
    estimate.kv_state_bytes = rows * kv_state_bytes_per_row(model, layers, tp);
  }
  estimate.chunks_in_flight = std::max<int64_t>(chunking.resident_chunks, stages - stage);
  const int64_t tokens_per_chunk = chunking.strategy == "pad_to_longest"
                                       ? chunking.micro_batch_sequences * longest_sequence
                                       : chunk_size;
  const int64_t per_token =
      layers * activation_bytes_per_layer_token(model, tp, tp > 1 && config.parallel.sequence_parallel) +
                            (part.output_head ? activation_bytes_per_head_token(model) : 0);
  const double cp = static_cast<double>(config.parallel.cp);  // a cp rank holds its share of the rows
  estimate.activation_bytes = static_cast<int64_t>(static_cast<double>(estimate.chunks_in_flight * tokens_per_chunk) /
                                                   cp * static_cast<double>(per_token));
  return estimate;
}

std::vector<LayoutMemory> layout_memory_table(const configs::Config& config, int64_t ranks, int64_t longest_sequence) {
  CF_CHECK(ranks >= 1, "a layout needs at least one rank, got ", ranks);
  std::vector<LayoutMemory> table;
  const auto divisors = [](int64_t n) {
    std::vector<int64_t> found;
    for (int64_t d = 1; d <= n; ++d) {
      if (n % d == 0) found.push_back(d);
    }
    return found;
  };
  for (const int64_t tp : divisors(ranks)) {
    for (const int64_t pp : divisors(ranks / tp)) {
      for (const int64_t cp : divisors(ranks / tp / pp)) {
        for (const bool sharded : {false, true}) {
          configs::Config layout = config;
          layout.parallel.tp = tp;
          layout.parallel.pp = pp;
          layout.parallel.cp = cp;
          layout.parallel.dp = ranks / tp / pp / cp;
          layout.parallel.shard_optimizer = sharded;
          if (sharded && layout.parallel.dp * cp == 1) continue;
          try {
            layout.validate();
          } catch (const configs::ConfigError&) {
            continue;  // a layout the rules reject (too many stages, tp not dividing the model, ...)
          }
          bool splits = true;  // (validate leaves this to the model when it comes from model.init_from)
          for (const auto& [key, size] : layout.model.tensor_parallel_split_sizes()) splits = splits && size % tp == 0;
          if (!splits) continue;
          LayoutMemory entry{layout.parallel, {}, 0};
          for (int stage = 0; stage < static_cast<int>(pp); ++stage) {
            const RankMemoryEstimate estimate = estimate_rank_memory(layout, stage, longest_sequence);
            if (stage == 0 || estimate.total_bytes() > entry.worst.total_bytes()) {
              entry.worst = estimate;
              entry.worst_stage = stage;
            }
          }
          table.push_back(entry);
        }
      }
    }
  }
  std::stable_sort(table.begin(), table.end(), [](const LayoutMemory& a, const LayoutMemory& b) {
    return a.worst.total_bytes() < b.worst.total_bytes();
  });
  return table;
}

DeviceMemory read_device_memory(const torch::Device& device) {
  DeviceMemory memory;
  if (device.is_cuda()) {
#ifdef CHUNKFLOW_WITH_CUDA
    size_t free_bytes = 0, total_bytes = 0;
    int previous = 0;
    cudaGetDevice(&previous);
    cudaSetDevice(device.index());
    const cudaError_t status = cudaMemGetInfo(&free_bytes, &total_bytes);
    cudaSetDevice(previous);
    CF_CHECK(status == cudaSuccess, "cudaMemGetInfo on cuda:", static_cast<int>(device.index()), " failed: ",
             cudaGetErrorString(status));
    memory.total_bytes = static_cast<int64_t>(total_bytes);
    memory.available_bytes = static_cast<int64_t>(free_bytes);
    memory.source = core::str_cat("cuda:", static_cast<int>(device.index()));
    return memory;
#else
    CF_FAIL("read_device_memory: ", device, " needs a build with CUDA");
#endif
  }
  const std::string text = core::read_file("/proc/meminfo");
  memory.total_bytes = meminfo_bytes(text, "MemTotal");
  memory.available_bytes = meminfo_bytes(text, "MemAvailable");
  memory.source = "host RAM (/proc/meminfo, shared by this machine's ranks)";
  return memory;
}

std::string describe_memory_estimate(const RankMemoryEstimate& estimate, const DeviceMemory& device,
                                     int64_t longest_sequence) {
  return core::str_cat("memory estimate per rank: model state ", core::format_bytes(estimate.model_state_bytes), " (",
                       estimate.parameters, " parameters) + K/V state ", core::format_bytes(estimate.kv_state_bytes),
                       " (longest sequence ", longest_sequence, " tokens) + activations ",
                       core::format_bytes(estimate.activation_bytes), " (", estimate.chunks_in_flight,
                       " chunk(s) in flight) = ", core::format_bytes(estimate.total_bytes()),
                       " before the runtime and allocator overhead; ", device.source, " has ",
                       core::format_bytes(device.total_bytes), " (", core::format_bytes(device.available_bytes),
                       " available)");
}

std::string check_memory_estimate(const RankMemoryEstimate& estimate, const DeviceMemory& device,
                                  const configs::Config& config, int ranks_sharing) {
  const int64_t ranks = std::max(ranks_sharing, 1);
  const std::string whose = ranks > 1 ? core::str_cat(" x ", ranks, " ranks sharing it") : "";
  CF_CHECK(estimate.model_state_bytes * ranks <= device.total_bytes, "the model cannot fit: ", estimate.parameters,
           " parameters on this rank need ", core::format_bytes(estimate.model_state_bytes), whose,
           " for weights, gradients and AdamW state (model.dtype = ", config.model.dtype, "), but ", device.source,
           " has ", core::format_bytes(device.total_bytes), " in all; split the layers over more pipeline stages "
           "(parallel.pp = ", config.parallel.pp, ")",
           config.parallel.shard_optimizer ? "" : ", shard the AdamW state over the data-parallel ranks "
                                                  "(parallel.shard_optimizer: true)",
           " or use a smaller model");
  if (estimate.total_bytes() * ranks <= device.available_bytes) return "";
  return core::str_cat("the memory estimate ", core::format_bytes(estimate.total_bytes()), whose, " exceeds the ",
                       core::format_bytes(device.available_bytes), " available on ", device.source,
                       "; the run may run out of memory: lower chunking.chunk_size (", config.chunking.chunk_size,
                       ") or chunking.resident_chunks (", config.chunking.resident_chunks,
                       "), or add pipeline stages (parallel.pp = ", config.parallel.pp, ")");
}

}  // namespace chunkflow::trainer
