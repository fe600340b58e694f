// Collective communication over one process group. One interface, real backends: MPI
// (mpi_communicator.h: CPU tensors, and CUDA tensors staged through host memory) and, later, NCCL
// for CUDA tensors.
// Every call is collective over the group unless it says otherwise; failures throw core::Error
// naming the rank, host, operation and the library's own error string.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>

namespace chunkflow::parallel {

enum class ReduceOp { kSum, kMax, kMin };

// A non-blocking operation in flight (isend, iall_reduce). It keeps its tensor alive;
// destroying it waits for completion, except while an exception unwinds (then it neither waits
// nor frees the buffer: the job is about to be aborted).
class Request {
 public:
  virtual ~Request() = default;
  virtual void wait() = 0;
  virtual bool done() = 0;  // true once complete (then wait() returns at once); drives progress
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "host:pid rank r/size" for messages.
  virtual std::string describe() const = 0;

  // In place: every rank ends with the elementwise reduction over the group. Contiguous tensor.
  virtual void all_reduce(torch::Tensor& tensor, ReduceOp op) = 0;
  // The same, non-blocking: `tensor` holds the result once the request completes. Every rank must
  // issue the group's collectives, blocking and non-blocking, in the same order.
  virtual std::unique_ptr<Request> iall_reduce(torch::Tensor& tensor, ReduceOp op) = 0;
  // [n, ...] on every rank -> [size x n, ...], rank r's block at rows [r n, (r + 1) n).
  virtual torch::Tensor all_gather(const torch::Tensor& tensor) = 0;
  // [size x n, ...] on every rank -> [n, ...]: rank r gets the reduction of everyone's block r.
  virtual torch::Tensor reduce_scatter(const torch::Tensor& tensor, ReduceOp op) = 0;
  // In place: every rank ends with `root`'s values (same shape and dtype everywhere).
  virtual void broadcast(torch::Tensor& tensor, int root) = 0;
  // Point to point (not collective): blocking send / receive into a tensor of the right shape.
  virtual void send(const torch::Tensor& tensor, int peer, int tag) = 0;
  virtual void recv(torch::Tensor& tensor, int peer, int tag) = 0;
  // Non-blocking send; messages between two ranks with the same tag arrive in the order sent.
  // The pipeline runtime sends this way so that no stage blocks on a peer's receive.
  virtual std::unique_ptr<Request> isend(const torch::Tensor& tensor, int peer, int tag) = 0;
  virtual void barrier() = 0;

  // A sub-group: ranks passing the same `color` form one group, ordered by `key`.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;

  // Ends every process of the job (the whole world, not just this group) with `code`; used by
  // `main` after an error so that no rank hangs in a collective.
  [[noreturn]] virtual void abort(int code) = 0;
};

}  // namespace chunkflow::parallel
