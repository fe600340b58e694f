// Invariant failures: loud, with location, never silently continued.
#include "core/error.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>

namespace chunkflow::core {

void fail_invariant(const char* file, int line, const std::string& what) {
  std::fprintf(stderr, "internal error: %s at %s:%d\n", what.c_str(), file, line);
  std::fflush(stderr);
  std::abort();
}

std::string host_name() {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

}  // namespace chunkflow::core
