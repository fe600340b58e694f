// Multi-rank GoogleTest programs link mpi_test_main.cpp as their main: it initializes MPI, lets
// only rank 0 print, and agrees the exit status over all ranks (any rank's failure fails all).
#pragma once

#include "parallel/communicator.h"

namespace chunkflow::testing {

// The MPI world of this test process (a world of one without mpirun).
parallel::Communicator& test_world();

}  // namespace chunkflow::testing
