// Device choice and device memory; see device_setup.h.
#include "trainer/device_setup.h"

#include <c10/util/Exception.h>

#include <cstdlib>

#include "configs/config_error.h"
#include "core/error.h"
#include "core/strings.h"
#include "kernels/device.h"

#ifdef CHUNKFLOW_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <utility>
#include <vector>
#endif

namespace chunkflow::trainer {

int local_rank_from_environment() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "LOCAL_RANK"}) {
    const char* value = std::getenv(name);
    if (value == nullptr || *value == '\0') continue;
    char* end = nullptr;
    const long rank = std::strtol(value, &end, 10);
    if (*end == '\0' && rank >= 0 && rank < (1 << 20)) return static_cast<int>(rank);
  }
  return 0;
}

int local_world_size_from_environment() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_SIZE", "LOCAL_WORLD_SIZE"}) {
    const char* value = std::getenv(name);
    if (value == nullptr || *value == '\0') continue;
    char* end = nullptr;
    const long size = std::strtol(value, &end, 10);
    if (*end == '\0' && size > 0 && size < (1 << 20)) return static_cast<int>(size);
  }
  return 0;
}

std::string choose_communication_backend(const std::string& backend, const torch::Device& device,
                                         int local_world_size, int cuda_devices, bool built_with_nccl) {
  if (backend == "mpi") return "mpi";
  if (backend == "nccl") {
    if (!device.is_cuda()) {
      throw configs::ConfigError(std::vector<std::string>{"parallel.backend", "run.device"},
                                 core::str_cat("parallel.backend = nccl needs CUDA tensors, but the run trains on ",
                                               device.str(), "; use parallel.backend: mpi (or auto)"));
    }
    if (!built_with_nccl) {
      throw configs::ConfigError("parallel.backend", "parallel.backend = nccl, but this build has no NCCL (nccl.h or "
                                                     "libnccl was not found when it was configured); use mpi or auto");
    }
    return "nccl";
  }
  if (backend != "auto") {
    throw configs::ConfigError("parallel.backend",
                               core::str_cat("parallel.backend must be auto, mpi or nccl, got \"", backend, "\""));
  }
  const bool own_gpus = local_world_size > 0 && local_world_size <= cuda_devices;
  return device.is_cuda() && built_with_nccl && own_gpus ? "nccl" : "mpi";
}

torch::Device resolve_training_device(const std::string& run_device, int local_rank) {
  if (run_device == "cpu") return torch::kCPU;
  if (run_device != "cuda" && run_device != "auto") {
    throw configs::ConfigError("run.device", core::str_cat("run.device must be auto, cpu or cuda, got \"", run_device, "\""));
  }
  const int devices = kernels::cuda_device_count();
  if (run_device == "auto" && (!kernels::built_with_cuda() || devices == 0)) return torch::kCPU;
  if (!kernels::built_with_cuda()) {
    throw configs::ConfigError("run.device", "run.device = cuda, but this build has no CUDA kernels (nvcc was not found "
                                             "when it was configured); rebuild on a machine with the CUDA toolkit, or "
                                             "use run.device: cpu");
  }
  if (devices == 0) {
    throw configs::ConfigError("run.device", core::str_cat("run.device = cuda, but no GPU is usable here (",
                                                           kernels::describe_devices(), "); use run.device: cpu"));
  }
  const int index = local_rank % devices;
  const torch::Device device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
  try {
#ifdef CHUNKFLOW_WITH_CUDA
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(index));
#endif
    // A GPU in exclusive mode held by another process, or out of memory, fails here, at start.
    torch::zeros({1}, torch::TensorOptions().device(device)).sum().item<float>();
  } catch (const c10::Error& error) {
    const std::string what = error.what_without_backtrace();
    throw configs::ConfigError("run.device", core::str_cat("run.device = cuda: GPU ", index, " (local rank ", local_rank,
                                                           " of ", devices, " visible GPUs) is not usable: ",
                                                           what.substr(0, what.find('\n')),
                                                           "; check nvidia-smi for processes holding it and "
                                                           "CUDA_VISIBLE_DEVICES"));
  }
  return device;
}

std::string describe_training_device(const torch::Device& device) {
  if (!device.is_cuda()) return device.str();
#ifdef CHUNKFLOW_WITH_CUDA
  size_t free_bytes = 0, total_bytes = 0;
  cudaDeviceProp properties{};
  if (cudaGetDeviceProperties(&properties, device.index()) == cudaSuccess &&
      cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
    return core::str_cat(device.str(), " (", properties.name, ", ", core::format_bytes(static_cast<double>(total_bytes)),
                         ", ", core::format_bytes(static_cast<double>(free_bytes)), " free)");
  }
#endif
  return device.str();
}

int64_t peak_device_memory_bytes(const torch::Device& device) {
#ifdef CHUNKFLOW_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    return stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
  }
#endif
  (void)device;
  return 0;
}

void reset_peak_device_memory(const torch::Device& device) {
#ifdef CHUNKFLOW_WITH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
#endif
  (void)device;
}

void synchronize_device(const torch::Device& device) {
#ifdef CHUNKFLOW_WITH_CUDA
  if (device.is_cuda()) c10::cuda::device_synchronize();
#endif
  (void)device;
}

#ifdef CHUNKFLOW_WITH_CUDA
// One (start, stop) event pair per interval, created on first use and kept for the timer's life.
struct DeviceBusyTimer::CudaEvents {
  std::vector<std::pair<cudaEvent_t, cudaEvent_t>> intervals;
  size_t recorded = 0;  // intervals begun since the last seconds()

  static void check(cudaError_t status, const char* call) {
    CF_CHECK(status == cudaSuccess, "DeviceBusyTimer: ", call, " failed: ", cudaGetErrorString(status));
  }
  ~CudaEvents() {
    for (auto& [start, stop] : intervals) {
      cudaEventDestroy(start);
      cudaEventDestroy(stop);
    }
  }
  void record(bool start) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    if (start) {
      if (recorded == intervals.size()) {
        std::pair<cudaEvent_t, cudaEvent_t> pair{};
        check(cudaEventCreate(&pair.first), "cudaEventCreate");
        check(cudaEventCreate(&pair.second), "cudaEventCreate");
        intervals.push_back(pair);
      }
      check(cudaEventRecord(intervals[recorded].first, stream), "cudaEventRecord");
    } else {
      CF_ASSERT(recorded < intervals.size(), "DeviceBusyTimer::end without begin");
      check(cudaEventRecord(intervals[recorded++].second, stream), "cudaEventRecord");
    }
  }
  double seconds() {
    double total = 0;
    if (recorded > 0) check(cudaEventSynchronize(intervals[recorded - 1].second), "cudaEventSynchronize");
    for (size_t index = 0; index < recorded; ++index) {
      float milliseconds = 0;
      check(cudaEventElapsedTime(&milliseconds, intervals[index].first, intervals[index].second),
            "cudaEventElapsedTime");
      total += milliseconds * 1e-3;
    }
    recorded = 0;
    return total;
  }
};
#else
struct DeviceBusyTimer::CudaEvents {};
#endif

DeviceBusyTimer::DeviceBusyTimer(const torch::Device& device) : device_(device) {
#ifdef CHUNKFLOW_WITH_CUDA
  if (device_.is_cuda()) events_ = std::make_unique<CudaEvents>();
#endif
}

DeviceBusyTimer::~DeviceBusyTimer() = default;

void DeviceBusyTimer::begin() {
#ifdef CHUNKFLOW_WITH_CUDA
  if (events_) return events_->record(true);
#endif
  host_begin_ = std::chrono::steady_clock::now();
}

void DeviceBusyTimer::end() {
#ifdef CHUNKFLOW_WITH_CUDA
  if (events_) return events_->record(false);
#endif
  host_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - host_begin_).count();
}

double DeviceBusyTimer::seconds() {
#ifdef CHUNKFLOW_WITH_CUDA
  if (events_) return events_->seconds();
#endif
  const double total = host_seconds_;
  host_seconds_ = 0;
  return total;
}

std::string describe_out_of_memory(const configs::ChunkingConfig& chunking, const OutOfMemoryContext& context,
                                   const std::string& allocator_message) {
  const std::string first_line = allocator_message.substr(0, allocator_message.find('\n'));
  std::string layout;
  std::string advice;
  if (chunking.strategy == "pad_to_longest") {
    layout = core::str_cat("chunking.micro_batch_sequences = ", chunking.micro_batch_sequences);
    advice = "lower chunking.micro_batch_sequences, or train with chunking.strategy = chunkflow (memory set by the "
             "chunk, not the longest sequence)";
  } else if (chunking.strategy == "pack_to_max") {
    layout = core::str_cat("chunking.chunk_size = ", chunking.chunk_size, ", chunking.recompute_layers = ",
                           chunking.recompute_layers ? "true" : "false");
    advice = "set chunking.recompute_layers = true, or train with chunking.strategy = chunkflow";
  } else {
    layout = core::str_cat("chunking.chunk_size = ", chunking.chunk_size,
                           ", chunking.resident_chunks = ", chunking.resident_chunks);
    advice = "lower chunking.resident_chunks (chunks that keep their activations) or chunking.chunk_size";
  }
  return core::str_cat("step ", context.step, " ran out of memory on ", context.device, " (", context.chunks,
                       " chunks of ", context.sequences, " sequences, the longest ", context.longest_sequence,
                       " tokens; chunking.strategy = ", chunking.strategy, ", ", layout, "): ", advice,
                       "; more ranks (parallel.cp, parallel.pp) also divide it, and chunkflow-plan estimates the "
                       "memory of a layout. The allocator said: ", first_line);
}

bool is_out_of_memory(const std::exception& error) {
  if (dynamic_cast<const c10::OutOfMemoryError*>(&error) != nullptr) return true;
  return std::string(error.what()).find("DefaultCPUAllocator: can't allocate memory") != std::string::npos;
}

}  // namespace chunkflow::trainer
