// Rank-prefixed, levelled logging to stderr: "[I 12:03:04 r0] message".
#pragma once

#include <string>

#include "core/error.h"

namespace chunkflow::core {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

// Parses "debug" | "info" | "warn" | "error"; throws Error naming `key` otherwise.
LogLevel parse_log_level(const std::string& text, const std::string& key);

void set_log_level(LogLevel level);
LogLevel log_level();
// The rank shown in every line; -1 (the default) hides it. Set once the communicator is up.
void set_log_rank(int rank);

void log_line(LogLevel level, const std::string& message);

template <typename... Parts>
void log_debug(Parts&&... parts) {
  if (log_level() <= LogLevel::kDebug) log_line(LogLevel::kDebug, str_cat(std::forward<Parts>(parts)...));
}
template <typename... Parts>
void log_info(Parts&&... parts) {
  if (log_level() <= LogLevel::kInfo) log_line(LogLevel::kInfo, str_cat(std::forward<Parts>(parts)...));
}
template <typename... Parts>
void log_warn(Parts&&... parts) {
  if (log_level() <= LogLevel::kWarn) log_line(LogLevel::kWarn, str_cat(std::forward<Parts>(parts)...));
}
template <typename... Parts>
void log_error(Parts&&... parts) {
  log_line(LogLevel::kError, str_cat(std::forward<Parts>(parts)...));
}

}  // namespace chunkflow::core
