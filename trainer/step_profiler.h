// One training step under LibTorch's Kineto profiler (logging.profile_step): where the step's time
// goes, per operator on the CPU and per kernel on the GPU, measured by the GPU's own timestamps
// (CUPTI) rather than host clocks around asynchronous work.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace chunkflow::trainer {

// One line of a profile summary: an operator (CPU) or a kernel / copy (GPU) and its totals.
struct ProfiledActivity {
  std::string name;
  int64_t calls = 0;
  double seconds = 0;  // summed durations (CPU operators: inclusive of the operators they call)
};

struct StepProfile {
  double wall_seconds = 0;        // start() to stop(), the device synchronised at both ends
  double device_busy_seconds = 0;  // union of the GPU activity intervals (0 on the CPU)
  std::vector<ProfiledActivity> device_activities;  // by total time, most first
  std::vector<ProfiledActivity> cpu_operators;      // by total (inclusive) time, most first

  // A plain-text table of the `top` heaviest of each kind with shares of the wall time, and the
  // GPU's busy share (a low one means the step waits on the host: launches, syncs, data).
  std::string summary(size_t top) const;
};

// Profiles what runs between start() and stop() on the calling thread and the autograd threads
// (CPU operators) and, on a CUDA device, every kernel and copy. Not reentrant: one profile at a
// time per process.
class StepProfiler {
 public:
  explicit StepProfiler(torch::Device device);
  ~StepProfiler();
  StepProfiler(const StepProfiler&) = delete;
  StepProfiler& operator=(const StepProfiler&) = delete;

  void start();
  // Stops, writes the Chrome / Perfetto trace to `trace_path` (its folder must exist) and returns
  // the totals.
  StepProfile stop(const std::string& trace_path);

 private:
  torch::Device device_;
  bool running_ = false;
  double started_ = 0;
};

}  // namespace chunkflow::trainer
