// Invariant failures: loud, with location, never silently continued.
#include "core/error.h"

#include <cstdio>
#include <cstdlib>

namespace chunkflow::core {

void fail_invariant(const char* file, int line, const std::string& what) {
  std::fprintf(stderr, "internal error: %s at %s:%d\n", what.c_str(), file, line);
  std::fflush(stderr);
  std::abort();
}

}  // namespace chunkflow::core
