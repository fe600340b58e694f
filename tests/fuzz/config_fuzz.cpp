// Fuzzes the YAML config loader (configs::load_config) with --set overrides, and the dump that
// every run saves: a config that loads must load again, unchanged, from its own to_yaml().
//
// Input: the YAML text. Lines of the form "#set <section.key=value>" (YAML comments, so the file
// parse ignores them) are passed as --set overrides, in order. Contract: load_config either
// throws core::Error (ConfigError) or returns a config with parse_config(to_yaml(c)) == c; any
// other exception, a crash or a sanitizer report is a bug.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "configs/config_loader.h"
#include "core/error.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

namespace configs = chunkflow::configs;
namespace fuzz = chunkflow::fuzz;

std::vector<std::string> overrides_in(std::string_view text) {
  constexpr std::string_view kMarker = "#set ";
  std::vector<std::string> overrides;
  size_t start = 0;
  while (start < text.size()) {
    const size_t end = std::min(text.find('\n', start), text.size());
    const std::string_view line = text.substr(start, end - start);
    if (line.substr(0, kMarker.size()) == kMarker) overrides.emplace_back(line.substr(kMarker.size()));
    start = end + 1;
  }
  return overrides;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = fuzz::scratch_path("run.yaml");
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  fuzz::write_bytes(path, text);
  configs::Config config;
  try {
    config = configs::load_config(path, overrides_in(text));
  } catch (const chunkflow::core::Error&) {
    return 0;  // a rejected config: the expected outcome for most inputs
  }
  const std::string dumped = configs::to_yaml(config);
  configs::Config reloaded;
  try {
    reloaded = configs::parse_config(dumped, "resolved.yaml");
  } catch (const chunkflow::core::Error& error) {
    std::fprintf(stderr, "fuzz: the resolved config does not load again: %s\n%s\n", error.what(),
                 dumped.c_str());
    std::abort();
  }
  if (!(reloaded == config)) {
    std::fprintf(stderr, "fuzz: the resolved config loads as a different config:\n%s\nreloaded:\n%s\n",
                 dumped.c_str(), configs::to_yaml(reloaded).c_str());
    std::abort();
  }
  return 0;
}
