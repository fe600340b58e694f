// Which device a rank trains on (run.device), and what the device reports about its memory.
// CUDA-only calls compile in every build; without CUDA kernels they say so.
#pragma once

#include <torch/types.h>

#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <string>

#include "configs/chunking_config.h"

namespace chunkflow::trainer {

// This rank's index among the ranks on its node: OMPI_COMM_WORLD_LOCAL_RANK (mpirun),
// SLURM_LOCALID (srun), LOCAL_RANK (torchrun-style launchers), else 0.
int local_rank_from_environment();

// The device of run.device for a rank with `local_rank`:
//   cpu  -> the CPU;
//   cuda -> GPU local_rank % (visible GPUs), made the current device of this thread and of
//           LibTorch (several ranks of one node share GPUs round-robin);
//   auto -> cuda when this build has the CUDA kernels and a GPU is visible, else the CPU.
// Throws configs::ConfigError naming run.device when cuda is asked for and this build has no CUDA
// kernels, no GPU is visible (with what the runtime said), the chosen GPU cannot allocate (busy in
// exclusive mode, out of memory), or the value is unknown.
torch::Device resolve_training_device(const std::string& run_device, int local_rank);

// Ranks on this node: OMPI_COMM_WORLD_LOCAL_SIZE, LOCAL_WORLD_SIZE, else 0 (unknown).
int local_world_size_from_environment();

// parallel.backend for a job of several ranks: "mpi" or "nccl".
//   nccl -> nccl; refused (configs::ConfigError naming parallel.backend) unless the device is CUDA
//           and the build has NCCL;
//   auto -> nccl when the device is CUDA, the build has NCCL and every rank of the node has a GPU
//           of its own (local_world_size known and <= cuda_devices: NCCL refuses two ranks of
//           one communicator on one GPU); else mpi, which stages CUDA tensors through host memory;
//   mpi  -> mpi.
std::string choose_communication_backend(const std::string& backend, const torch::Device& device,
                                         int local_world_size, int cuda_devices, bool built_with_nccl);

// One line for the log: "cuda:0 (NVIDIA H200, 139.8 GiB, 137.2 GiB free)" or "cpu".
std::string describe_training_device(const torch::Device& device);

// LibTorch's caching allocator on a CUDA device: the most bytes allocated at once since the last
// reset, and the reset. 0 / no-op for the CPU.
int64_t peak_device_memory_bytes(const torch::Device& device);
void reset_peak_device_memory(const torch::Device& device);

// Waits until the work queued on a CUDA device has run (step boundaries, timings); no-op for the
// CPU.
void synchronize_device(const torch::Device& device);

// The device time of work issued between begin() and end() calls, summed over the intervals. On
// the CPU the work runs as it is issued: host clocks. On CUDA a pair of timing events per interval
// on the current stream (the host only queues the work): each interval is the GPU's time from its
// first to its last kernel, gaps while the GPU waited on the host included. The calibration of the
// data-parallel cost model and the pipeline's measured bubble read this.
class DeviceBusyTimer {
 public:
  explicit DeviceBusyTimer(const torch::Device& device);
  ~DeviceBusyTimer();
  DeviceBusyTimer(const DeviceBusyTimer&) = delete;
  DeviceBusyTimer& operator=(const DeviceBusyTimer&) = delete;

  void begin();
  void end();
  // The sum since the last call; on CUDA it waits until the last interval's work has run.
  double seconds();

 private:
  struct CudaEvents;
  torch::Device device_;
  std::chrono::steady_clock::time_point host_begin_;
  double host_seconds_ = 0;
  std::unique_ptr<CudaEvents> events_;  // CUDA only
};

// What a step that ran out of device memory was doing, for the error that ends the run: the step,
// its shape (chunks, sequences, longest sequence), the chunking keys that set the peak with their
// values, what to change, and the first line of the allocator's own message (`allocator_message`,
// which carries the GPU's capacity and free memory).
struct OutOfMemoryContext {
  int64_t step = 0, chunks = 0, sequences = 0, longest_sequence = 0;
  std::string device;  // describe_training_device's line
};
std::string describe_out_of_memory(const configs::ChunkingConfig& chunking, const OutOfMemoryContext& context,
                                   const std::string& allocator_message);

// True for an allocation failure of LibTorch: c10::OutOfMemoryError (the CUDA caching allocator)
// or the CPU allocator's "can't allocate memory" error.
bool is_out_of_memory(const std::exception& error);

}  // namespace chunkflow::trainer
