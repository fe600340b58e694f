// Helpers shared by the config tests: run a callable, capture the ConfigError it must throw, and
// check that its message carries every expected part.
#pragma once

#include <gtest/gtest.h>

#include <initializer_list>
#include <string>

#include "configs/config_error.h"

namespace chunkflow::configs::testing {

// The ConfigError `action` throws; a test failure (and an empty error) when it throws none.
template <typename Action>
ConfigError config_error_of(Action&& action) {
  try {
    action();
  } catch (const ConfigError& error) {
    return error;
  }
  ADD_FAILURE() << "expected a ConfigError, none was thrown";
  return ConfigError("", "");
}

inline void expect_contains(const std::string& message, std::initializer_list<std::string> parts) {
  for (const auto& part : parts) {
    EXPECT_NE(message.find(part), std::string::npos)
        << "message lacks '" << part << "':\n  " << message;
  }
}

}  // namespace chunkflow::configs::testing
