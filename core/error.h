// The project's one error type for user mistakes (config, data, files, command line) and the
// check macros that build its messages; internal invariants abort through CF_ASSERT instead.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace chunkflow::core {

// Thrown for every mistake a user can fix: the message names the key or path, the value, the
// rule that was broken and, where there is one, a hint. `main` catches it, logs it with the rank
// prefix and aborts the communicator.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

template <typename... Parts>
std::string str_cat(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}

// This machine's host name, for messages that say where a rank failed ("localhost" when the
// system does not tell).
std::string host_name();

// Prints "internal error: <what> at file:line" to stderr and aborts. For broken invariants of
// the project's own code, never for user input.
[[noreturn]] void fail_invariant(const char* file, int line, const std::string& what);

}  // namespace chunkflow::core

// CF_CHECK(cond, parts...): throws core::Error(str_cat(parts...)) when cond is false.
#define CF_CHECK(cond, ...)                                               \
  do {                                                                    \
    if (!(cond)) throw ::chunkflow::core::Error(::chunkflow::core::str_cat(__VA_ARGS__)); \
  } while (false)

// CF_FAIL(parts...): throws core::Error unconditionally.
#define CF_FAIL(...) throw ::chunkflow::core::Error(::chunkflow::core::str_cat(__VA_ARGS__))

// CF_ASSERT(cond, parts...): internal invariant; aborts with file:line when false.
#define CF_ASSERT(cond, ...)                                                        \
  do {                                                                              \
    if (!(cond))                                                                    \
      ::chunkflow::core::fail_invariant(__FILE__, __LINE__,                         \
                                        ::chunkflow::core::str_cat(#cond, " ", ##__VA_ARGS__)); \
  } while (false)
