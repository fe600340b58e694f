// Process memory from /proc/self/status and the VmHWM reset through /proc/self/clear_refs.
#include "trainer/memory_stats.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "core/error.h"

namespace chunkflow::trainer {
namespace {

constexpr const char* kStatusPath = "/proc/self/status";
constexpr const char* kClearRefsPath = "/proc/self/clear_refs";

// Parses "<Key>:   <number> kB" into bytes; returns -1 when `line` is not that key.
int64_t field_bytes(const std::string& line, const char* key) {
  const size_t key_length = std::strlen(key);
  if (line.size() <= key_length || line.compare(0, key_length, key) != 0 ||
      line[key_length] != ':') {
    return -1;
  }
  long long kibibytes = 0;
  char unit[8] = {};
  CF_CHECK(std::sscanf(line.c_str() + key_length + 1, "%lld %7s", &kibibytes, unit) == 2 &&
               std::strcmp(unit, "kB") == 0,
           kStatusPath, ": cannot parse '", line, "' (expected '", key, ": <number> kB')");
  return static_cast<int64_t>(kibibytes) * 1024;
}

}  // namespace

MemoryStats read_memory_stats() {
  std::ifstream status(kStatusPath);
  CF_CHECK(status.is_open(), "cannot open ", kStatusPath,
           " to read memory use (needs Linux with /proc mounted)");
  MemoryStats stats{-1, -1};
  std::string line;
  while (std::getline(status, line) && (stats.current_rss_bytes < 0 || stats.peak_rss_bytes < 0)) {
    if (const int64_t rss = field_bytes(line, "VmRSS"); rss >= 0) stats.current_rss_bytes = rss;
    if (const int64_t hwm = field_bytes(line, "VmHWM"); hwm >= 0) stats.peak_rss_bytes = hwm;
  }
  CF_CHECK(stats.current_rss_bytes >= 0 && stats.peak_rss_bytes >= 0, kStatusPath,
           " has no VmRSS or VmHWM line");
  return stats;
}

bool reset_peak_rss() {
  std::FILE* clear_refs = std::fopen(kClearRefsPath, "w");
  if (clear_refs == nullptr) return false;
  const bool written = std::fputs("5", clear_refs) >= 0;
  // The kernel acts on the write, which stdio may hold until fclose; an EINVAL from a kernel
  // without "5" surfaces there.
  const bool closed = std::fclose(clear_refs) == 0;
  return written && closed;
}

}  // namespace chunkflow::trainer
