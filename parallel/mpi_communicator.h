// The MPI backend of Communicator (OpenMPI), for CPU tensors.
#pragma once

#include <memory>

#include "parallel/communicator.h"

namespace chunkflow::parallel {

// Initializes MPI once per process (MPI_THREAD_FUNNELED) and returns the world communicator.
// MPI is finalized at process exit. Without mpirun it is a world of one.
std::unique_ptr<Communicator> mpi_world(int* argc, char*** argv);

}  // namespace chunkflow::parallel
