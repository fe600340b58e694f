// One line per call, written with a single fwrite so lines of concurrent ranks do not interleave.
#include "core/logging.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>

namespace chunkflow::core {
namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
std::atomic<int> g_rank{-1};
}  // namespace

LogLevel parse_log_level(const std::string& text, const std::string& key) {
  if (text == "debug") return LogLevel::kDebug;
  if (text == "info") return LogLevel::kInfo;
  if (text == "warn") return LogLevel::kWarn;
  if (text == "error") return LogLevel::kError;
  CF_FAIL(key, " must be one of debug, info, warn, error; got '", text, "'");
}

void set_log_level(LogLevel level) { g_level = static_cast<int>(level); }
LogLevel log_level() { return static_cast<LogLevel>(g_level.load()); }
void set_log_rank(int rank) { g_rank = rank; }

void log_line(LogLevel level, const std::string& message) {
  static const char kLetters[] = {'D', 'I', 'W', 'E'};
  const auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm local{};
  localtime_r(&now, &local);
  char stamp[16];
  std::strftime(stamp, sizeof(stamp), "%H:%M:%S", &local);
  std::string line = str_cat("[", kLetters[static_cast<int>(level)], " ", stamp);
  if (g_rank >= 0) line += str_cat(" r", g_rank.load());
  line += "] ";
  line += message;
  line += '\n';
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

}  // namespace chunkflow::core
