// The MPI backend of Communicator (OpenMPI). CPU tensors go to MPI as they are; CUDA tensors are
// staged through pinned host memory (so several ranks can share one GPU, which NCCL refuses), and
// bfloat16/float16 travel as 16-bit words, widened to float32 where MPI reduces them.
#pragma once

#include <memory>

#include "parallel/communicator.h"

namespace chunkflow::parallel {

// Initializes MPI once per process (MPI_THREAD_SERIALIZED: autograd's CUDA device thread
// communicates too) and returns the world communicator.
// MPI is finalized at process exit. Without mpirun it is a world of one.
std::unique_ptr<Communicator> mpi_world(int* argc, char*** argv);

}  // namespace chunkflow::parallel
