// The collectives of tensor parallelism (models/tensor_parallel.h) over a Communicator.
#pragma once

#include "models/tensor_parallel.h"
#include "parallel/communicator.h"

namespace chunkflow::parallel {

// models::TensorParallel for `group` (rank and size are the group's): f and g as autograd functions
// whose all-reduces go through `group` (forward for g, backward for f), the plain in-place sum and
// max, and with `sequence_parallel` the row gather (all_gather_rows, context_parallel.h) and row
// reduce-scatter. `group` must outlive every model and autograd graph that uses the result.
models::TensorParallel tensor_parallel_group(Communicator& group, bool sequence_parallel = false);

}  // namespace chunkflow::parallel
