// The collectives of tensor parallelism (models/tensor_parallel.h) over a Communicator.
#pragma once

#include "models/tensor_parallel.h"
#include "parallel/communicator.h"

namespace chunkflow::parallel {

// models::TensorParallel for `group` (rank and size are the group's): f and g as autograd functions
// whose all-reduces go through `group` (forward for g, backward for f), and the plain in-place sum
// and max. `group` must outlive every model and autograd graph that uses the result.
models::TensorParallel tensor_parallel_group(Communicator& group);

}  // namespace chunkflow::parallel
