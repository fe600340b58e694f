// Fresh random data in every test run, reproducibly: the seed is CHUNKFLOW_TEST_SEED when set,
// else drawn from std::random_device; tests print it so a failure can be replayed.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <random>

namespace chunkflow::testing {

inline uint64_t pick_seed() {
  if (const char* text = std::getenv("CHUNKFLOW_TEST_SEED")) return std::strtoull(text, nullptr, 10);
  std::random_device device;
  return (uint64_t{device()} << 32) ^ device();
}

}  // namespace chunkflow::testing
