// ConfigError and the value formatting shared by messages and the YAML dump; see config_error.h.
#include "configs/config_error.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <utility>

#include "core/strings.h"

namespace chunkflow::configs {

ConfigError::ConfigError(std::string key, const std::string& message)
    : ConfigError(std::vector<std::string>{std::move(key)}, message) {}

ConfigError::ConfigError(std::vector<std::string> keys, const std::string& message)
    : core::Error(message), keys_(std::move(keys)) {
  if (keys_.empty()) keys_.emplace_back();
}

const std::string& ConfigError::key() const { return keys_.front(); }

std::string format_value(int64_t value) { return std::to_string(value); }

std::string format_value(double value) {
  if (std::isnan(value)) return ".nan";
  if (std::isinf(value)) return value > 0 ? ".inf" : "-.inf";
  char buffer[64];
  // Shortest round-trip digits; fixed notation for everyday magnitudes, scientific for the
  // tiny and huge (1e-08 reads better than 0.00000001).
  const double magnitude = std::fabs(value);
  const bool fixed = magnitude == 0 || (magnitude >= 1e-4 && magnitude < 1e15);
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value,
                                    fixed ? std::chars_format::fixed : std::chars_format::scientific);
  std::string text(buffer, result.ptr);
  // A YAML reader must see a float, and "1.0" reads better than "1" for a rate.
  if (text.find_first_of(".e") == std::string::npos) text += ".0";
  return text;
}

std::string format_value(bool value) { return value ? "true" : "false"; }

std::string format_value(const std::string& value) {
  std::string out = "\"";
  for (const char c : value) {
    const auto byte = static_cast<unsigned char>(c);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (byte < 0x20 || byte == 0x7f) {
          char escaped[8];
          std::snprintf(escaped, sizeof(escaped), "\\x%02x", byte);
          out += escaped;
        } else {
          out += c;  // UTF-8 passes through unchanged.
        }
    }
  }
  return out + "\"";
}

std::string format_value(const char* value) { return format_value(std::string(value)); }

void check_one_of(const std::string& key, const std::string& value,
                  std::initializer_list<const char*> choices) {
  std::vector<std::string> names(choices.begin(), choices.end());
  for (const auto& name : names) {
    if (name == value) return;
  }
  throw ConfigError(key, key + " must be one of " + core::join(names, "|") + ", got " +
                             format_value(value) + core::did_you_mean(value, names));
}

}  // namespace chunkflow::configs
