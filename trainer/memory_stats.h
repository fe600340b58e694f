// Host memory of this process (resident set, now and at its peak) for the step metrics. This is
// CPU memory only, read from Linux's /proc; CUDA allocator statistics are a separate, later
// concern.
#pragma once

#include <cstdint>

namespace chunkflow::trainer {

struct MemoryStats {
  int64_t current_rss_bytes = 0;  // VmRSS: pages of this process resident in RAM now
  int64_t peak_rss_bytes = 0;     // VmHWM: the most resident at once since start or the last reset
};

// Reads VmRSS and VmHWM from /proc/self/status (kernel-reported in KiB; returned in bytes).
// Throws core::Error naming /proc/self/status when it cannot be read or lacks either field
// (not Linux, or /proc not mounted).
MemoryStats read_memory_stats();

// Resets the peak (VmHWM) to the current resident size by writing "5" to /proc/self/clear_refs
// (Linux >= 4.0), so that peak_rss_bytes can be read per step or per phase. Returns false when
// the kernel refuses (older kernel, restricted /proc); the peak then keeps counting from start.
bool reset_peak_rss();

}  // namespace chunkflow::trainer
