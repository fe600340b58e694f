// The NCCL backend's entry points in builds without NCCL; see nccl_communicator.h.
#include "core/error.h"
#include "parallel/nccl_communicator.h"

namespace chunkflow::parallel {

bool built_with_nccl() { return false; }

std::unique_ptr<Communicator> nccl_communicator(Communicator&, int) {
  CF_FAIL("parallel.backend = nccl, but this build has no NCCL (CUDA or nccl.h was not found when it was "
          "configured); use parallel.backend: mpi");
}

}  // namespace chunkflow::parallel
