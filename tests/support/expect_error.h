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

}  // namespace chunkflow::testing
