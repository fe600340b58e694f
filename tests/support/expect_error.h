// Test helper: an action must fail with core::Error whose message names every expected part
// (file, key, value, rule): the project's promise for bad input.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/error.h"

namespace chunkflow::testing {

template <typename Action>
void expect_error_mentions(Action&& action, const std::vector<std::string>& parts) {
  try {
    action();
  } catch (const core::Error& error) {
    const std::string message = error.what();
    for (const std::string& part : parts) {
      EXPECT_NE(message.find(part), std::string::npos) << "message lacks '" << part << "':\n  " << message;
    }
    return;
  }
  ADD_FAILURE() << "expected core::Error";
}

// The message of the core::Error that `action` throws, or "<no error>".
template <typename Action>
std::string error_message(Action&& action) {
  try {
    action();
  } catch (const core::Error& error) {
    return error.what();
  }
  return "<no error>";
}

// EXPECT_TRUE(contains(message, "rule")) prints both strings when the part is missing.
inline ::testing::AssertionResult contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << text << "\" lacks \"" << part << "\"";
}

}  // namespace chunkflow::testing
