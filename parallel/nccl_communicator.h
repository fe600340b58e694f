// The NCCL backend of Communicator: one CUDA device per rank, collectives and point-to-point
// transfers on the communicator's own stream, ordered against the caller's current stream by
// CUDA events. Built when the CUDA kernels and NCCL are (CHUNKFLOW_WITH_NCCL); NCCL refuses two
// ranks of one communicator on one GPU, so ranks that share a GPU use the MPI backend.
//
// Semantics beyond communicator.h:
//  - Blocking calls (all_reduce, all_gather, reduce_scatter, broadcast, recv) return once the
//    operation is queued: work later queued on the caller's current stream sees the result, and
//    host reads (.item(), .cpu()) synchronise as usual. CPU tensors are staged through the device
//    (small metric sums) and are complete when the call returns.
//  - isend is queued lazily and issued in one NCCL group with the next receive, wait or done of
//    this communicator, so two ranks that each send before they receive never deadlock in NCCL's
//    blocking point-to-point.
//  - Messages between two ranks arrive in the order sent whatever their tag: NCCL has no tags.
//    Every caller's tags keep one direction per peer pair at a time, so this is the same order.
//  - Errors throw core::Error naming the rank, host, the call (file:line) and NCCL's own message
//    (ncclGetLastError); abort() aborts the NCCL communicator and then the bootstrap's job.
#pragma once

#include <memory>

#include "parallel/communicator.h"

namespace chunkflow::parallel {

// Whether this build has the NCCL backend.
bool built_with_nccl();

// An NCCL communicator over the ranks of `bootstrap` (collective over it): rank 0 creates the
// unique id and broadcasts it through `bootstrap` (MPI); every rank uses CUDA device
// `device_index`, which must differ between the ranks of one host. `bootstrap` must outlive the
// result (abort() ends the job through it). Throws core::Error when the build has no NCCL.
std::unique_ptr<Communicator> nccl_communicator(Communicator& bootstrap, int device_index);

}  // namespace chunkflow::parallel
