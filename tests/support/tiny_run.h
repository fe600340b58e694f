// A complete, tiny training run for trainer tests: writes a small synthetic long-tail dataset into
// `dir` and returns a config (2-layer model, 24-token chunks, 20 steps) that trains on it in
// about a second. Tests override what they exercise.
#pragma once

#include "configs/config.h"
#include "tests/support/temp_dir.h"

namespace chunkflow::testing {

configs::Config tiny_run(const TempDir& dir);

}  // namespace chunkflow::testing
