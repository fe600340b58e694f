// The config library's error type and the small helpers every section's validate() uses to word
// its messages the same way: "<section.key> must be <rule>, got <value>[; <hint>]".
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "core/error.h"

namespace chunkflow::configs {

// A config mistake. keys() are the dotted YAML keys the broken rule is about (key() is the first;
// empty for file-level mistakes such as a missing file). The loader rethrows it with the source
// location of those keys appended: "... (run.yaml:12)".
class ConfigError : public core::Error {
 public:
  ConfigError(std::string key, const std::string& message);
  ConfigError(std::vector<std::string> keys, const std::string& message);

  const std::string& key() const;
  const std::vector<std::string>& keys() const { return keys_; }

 private:
  std::vector<std::string> keys_;
};

// Values as the messages and the YAML dump write them: strings double-quoted with YAML escapes,
// doubles in their shortest round-trip form (always with a '.' or an exponent), bools as
// true/false.
std::string format_value(int64_t value);
std::string format_value(double value);
std::string format_value(bool value);
std::string format_value(const std::string& value);
std::string format_value(const char* value);

// Throws ConfigError(key, "<key> must be <rule>, got <value>[; <hint>]") unless `ok`.
template <typename Value>
void check_field(bool ok, const std::string& key, const std::string& rule, const Value& value,
                 const std::string& hint = "") {
  if (ok) return;
  throw ConfigError(key, key + " must be " + rule + ", got " + format_value(value) +
                             (hint.empty() ? "" : "; " + hint));
}

// Throws unless `value` is one of `choices`: "<key> must be one of a|b|c, got "x"; did you mean 'y'?"
void check_one_of(const std::string& key, const std::string& value,
                  std::initializer_list<const char*> choices);

}  // namespace chunkflow::configs
