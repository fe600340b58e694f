// Communicator over MPI; see mpi_communicator.h. Only this file includes <mpi.h>.
#include "parallel/mpi_communicator.h"

#include <mpi.h>
#include <unistd.h>

#include <cstdlib>
#include <exception>
#include <functional>
#include <limits>

#include "core/error.h"
#include "core/logging.h"

namespace chunkflow::parallel {
namespace {

// Throws core::Error with the rank, host, the failing call (file:line) and MPI's own text.
#define CF_MPI_CHECK(call, communicator)                                                       \
  do {                                                                                         \
    const int mpi_status = (call);                                                             \
    if (mpi_status != MPI_SUCCESS) throw_mpi_error(mpi_status, #call, __FILE__, __LINE__, communicator); \
  } while (false)

using core::host_name;

[[noreturn]] void throw_mpi_error(int status, const char* call, const char* file, int line, MPI_Comm communicator) {
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  MPI_Error_string(status, text, &length);
  int rank = -1;
  MPI_Comm_rank(communicator, &rank);
  CF_FAIL("MPI error on rank ", rank, " (", host_name(), "): ", call, " failed at ", file, ":", line, ": ",
          std::string(text, static_cast<size_t>(length)));
}

MPI_Datatype mpi_type(const torch::Tensor& tensor) {
  switch (tensor.scalar_type()) {
    case torch::kFloat32: return MPI_FLOAT;
    case torch::kFloat64: return MPI_DOUBLE;
    case torch::kInt32: return MPI_INT32_T;
    case torch::kInt64: return MPI_INT64_T;
    case torch::kUInt8: return MPI_UINT8_T;
    // MPI has no 16-bit floats: they travel as 16-bit words (reductions widen them first, below).
    case torch::kBFloat16:
    case torch::kFloat16: return MPI_UINT16_T;
    default: CF_FAIL("MPI communicator: unsupported dtype ", tensor.scalar_type());
  }
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return MPI_SUM;
    case ReduceOp::kMax: return MPI_MAX;
    case ReduceOp::kMin: return MPI_MIN;
  }
  return MPI_SUM;
}

int checked_count(const torch::Tensor& tensor, const char* operation) {
  CF_CHECK(tensor.device().is_cpu(), "MPI communicator ", operation, ": internal: a ", tensor.device(),
           " tensor reached MPI without staging");
  CF_CHECK(tensor.is_contiguous(), "MPI communicator ", operation, ": tensor must be contiguous");
  CF_CHECK(tensor.numel() <= std::numeric_limits<int>::max(), "MPI communicator ", operation, ": ",
           tensor.numel(), " elements exceed MPI's int count");
  return static_cast<int>(tensor.numel());
}

// MPI reads and writes host memory of types it knows. A CUDA tensor is staged through pinned host
// memory (the copy to the host waits for the tensor's pending work on its stream); 16-bit floats
// travel as 16-bit words, or as float32 when MPI must reduce them. Returns `tensor` itself when
// it can go as it is.
torch::Tensor staged(const torch::Tensor& tensor, bool reduces) {
  CF_CHECK(tensor.device().is_cpu() || tensor.is_cuda(), "MPI communicator: tensors must be on the CPU or a CUDA "
           "device, got ", tensor.device());
  const bool widen = reduces && (tensor.scalar_type() == torch::kBFloat16 || tensor.scalar_type() == torch::kFloat16);
  if (!widen && tensor.device().is_cpu()) return tensor;
  const torch::ScalarType dtype = widen ? torch::kFloat32 : tensor.scalar_type();
  torch::Tensor host = torch::empty(tensor.sizes(), torch::TensorOptions().dtype(dtype).pinned_memory(tensor.is_cuda()));
  host.copy_(tensor);
  return host;
}

// A host buffer for a result that belongs in a tensor like `like` (pinned when `like` is CUDA).
torch::Tensor host_buffer(c10::IntArrayRef sizes, const torch::Tensor& like, bool reduces) {
  const bool widen = reduces && (like.scalar_type() == torch::kBFloat16 || like.scalar_type() == torch::kFloat16);
  return torch::empty(sizes,
                      torch::TensorOptions().dtype(widen ? torch::kFloat32 : like.scalar_type()).pinned_memory(like.is_cuda()));
}

// Writes a staged result back into `tensor` (no-op when MPI worked on the tensor itself).
void unstage(torch::Tensor& tensor, const torch::Tensor& host) {
  if (!host.is_same(tensor)) tensor.copy_(host);
}

class MpiRequest final : public Request {
 public:
  // `finish` runs once, when the operation is complete (copies a staged result back).
  MpiRequest(torch::Tensor tensor, MPI_Request request, MPI_Comm communicator, std::function<void()> finish = {})
      : tensor_(std::move(tensor)), request_(request), communicator_(communicator), finish_(std::move(finish)) {}
  ~MpiRequest() override {
    if (request_ == MPI_REQUEST_NULL) return;
    if (std::uncaught_exceptions() > 0) {
      // Unwinding after an error: the peer this operation needs may be the one that failed, and
      // main() is about to abort the job. Do not wait; keep the buffer alive for MPI instead.
      new torch::Tensor(tensor_);  // deliberately leaked
      return;
    }
    MPI_Wait(&request_, MPI_STATUS_IGNORE);
    complete();
  }
  void wait() override {
    if (request_ != MPI_REQUEST_NULL) CF_MPI_CHECK(MPI_Wait(&request_, MPI_STATUS_IGNORE), communicator_);
    complete();
  }
  bool done() override {
    if (request_ != MPI_REQUEST_NULL) {
      int completed = 0;
      CF_MPI_CHECK(MPI_Test(&request_, &completed, MPI_STATUS_IGNORE), communicator_);
      if (completed == 0) return false;
    }
    complete();
    return true;
  }

 private:
  void complete() {
    if (!finish_) return;
    const std::function<void()> finish = std::move(finish_);
    finish_ = nullptr;
    finish();
  }

  torch::Tensor tensor_;  // the buffer MPI uses until the operation completes
  MPI_Request request_;
  MPI_Comm communicator_;
  std::function<void()> finish_;
};

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm communicator, bool owned) : communicator_(communicator), owned_(owned) {
    MPI_Comm_rank(communicator_, &rank_);
    MPI_Comm_size(communicator_, &size_);
    // Errors come back as codes so they become exceptions with context, not silent aborts.
    MPI_Comm_set_errhandler(communicator_, MPI_ERRORS_RETURN);
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned_ && !finalized) MPI_Comm_free(&communicator_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string describe() const override {
    return core::str_cat(host_name(), ":", ::getpid(), " rank ", rank_, "/", size_);
  }

  void all_reduce(torch::Tensor& tensor, ReduceOp op) override {
    const torch::Tensor host = staged(tensor, true);
    const int count = checked_count(host, "all_reduce");
    CF_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, host.data_ptr(), count, mpi_type(host), mpi_op(op), communicator_),
                 communicator_);
    unstage(tensor, host);
  }

  std::unique_ptr<Request> iall_reduce(torch::Tensor& tensor, ReduceOp op) override {
    const torch::Tensor host = staged(tensor, true);
    const int count = checked_count(host, "iall_reduce");
    MPI_Request request = MPI_REQUEST_NULL;
    CF_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, host.data_ptr(), count, mpi_type(host), mpi_op(op), communicator_,
                                &request),
                 communicator_);
    std::function<void()> finish;
    if (!host.is_same(tensor)) finish = [tensor, host]() mutable { unstage(tensor, host); };
    return std::make_unique<MpiRequest>(host, request, communicator_, std::move(finish));
  }

  torch::Tensor all_gather(const torch::Tensor& tensor) override {
    const torch::Tensor host = staged(tensor, false);
    const int count = checked_count(host, "all_gather");
    std::vector<int64_t> shape = tensor.sizes().vec();
    CF_CHECK(!shape.empty(), "MPI communicator all_gather: tensor needs at least one dimension");
    shape[0] *= size_;
    const torch::Tensor gathered = host_buffer(shape, tensor, false);
    CF_MPI_CHECK(MPI_Allgather(host.data_ptr(), count, mpi_type(host), gathered.data_ptr(), count, mpi_type(host),
                               communicator_),
                 communicator_);
    return gathered.to(tensor.device());
  }

  torch::Tensor reduce_scatter(const torch::Tensor& tensor, ReduceOp op) override {
    const torch::Tensor host = staged(tensor, true);
    checked_count(host, "reduce_scatter");
    CF_CHECK(tensor.dim() >= 1 && tensor.size(0) % size_ == 0, "MPI communicator reduce_scatter: first dimension ",
             tensor.dim() >= 1 ? tensor.size(0) : 0, " is not a multiple of the group size ", size_);
    std::vector<int64_t> shape = tensor.sizes().vec();
    shape[0] /= size_;
    const torch::Tensor block = host_buffer(shape, tensor, true);
    CF_MPI_CHECK(MPI_Reduce_scatter_block(host.data_ptr(), block.data_ptr(), static_cast<int>(block.numel()),
                                          mpi_type(host), mpi_op(op), communicator_),
                 communicator_);
    return block.to(tensor.device(), tensor.scalar_type());
  }

  void broadcast(torch::Tensor& tensor, int root) override {
    const torch::Tensor host = staged(tensor, false);
    const int count = checked_count(host, "broadcast");
    CF_MPI_CHECK(MPI_Bcast(host.data_ptr(), count, mpi_type(host), root, communicator_), communicator_);
    unstage(tensor, host);
  }

  void send(const torch::Tensor& tensor, int peer, int tag) override {
    const torch::Tensor host = staged(tensor, false);
    const int count = checked_count(host, "send");
    CF_MPI_CHECK(MPI_Send(host.data_ptr(), count, mpi_type(host), peer, tag, communicator_), communicator_);
  }

  void recv(torch::Tensor& tensor, int peer, int tag) override {
    const torch::Tensor host = tensor.device().is_cpu() ? tensor : host_buffer(tensor.sizes(), tensor, false);
    const int count = checked_count(host, "recv");
    MPI_Status status;
    CF_MPI_CHECK(MPI_Recv(host.data_ptr(), count, mpi_type(host), peer, tag, communicator_, &status), communicator_);
    int received = 0;
    MPI_Get_count(&status, mpi_type(host), &received);
    CF_CHECK(received == count, "MPI communicator recv on rank ", rank_, ": expected ", count,
             " elements from rank ", peer, " (tag ", tag, "), got ", received);
    unstage(tensor, host);
  }

  std::unique_ptr<Request> isend(const torch::Tensor& tensor, int peer, int tag) override {
    const torch::Tensor host = staged(tensor, false);
    const int count = checked_count(host, "isend");
    MPI_Request request = MPI_REQUEST_NULL;
    CF_MPI_CHECK(MPI_Isend(host.data_ptr(), count, mpi_type(host), peer, tag, communicator_, &request),
                 communicator_);
    return std::make_unique<MpiRequest>(host, request, communicator_);
  }

  void barrier() override { CF_MPI_CHECK(MPI_Barrier(communicator_), communicator_); }

  std::unique_ptr<Communicator> split(int color, int key) override {
    MPI_Comm sub;
    CF_MPI_CHECK(MPI_Comm_split(communicator_, color, key, &sub), communicator_);
    return std::make_unique<MpiCommunicator>(sub, true);
  }

  [[noreturn]] void abort(int code) override {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);
  }

 private:
  MPI_Comm communicator_;
  bool owned_;
  int rank_ = 0, size_ = 1;
};

void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

}  // namespace

std::unique_ptr<Communicator> mpi_world(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    // Serialized, not funneled: on CUDA, autograd runs the backward (and the gradient reducer's
    // hooks, and the context-parallel gather's backward, which communicate) on its device thread
    // while the main thread waits in backward(); calls never overlap.
    int provided = 0;
    CF_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided) == MPI_SUCCESS, "MPI_Init_thread failed on ",
             host_name());
    if (provided < MPI_THREAD_SERIALIZED) {
      core::log_warn("MPI provides thread level ", provided, " < MPI_THREAD_SERIALIZED: CPU training is unaffected, but "
                     "CUDA training communicates from autograd's device thread and may fail");
    }
    std::atexit(finalize_at_exit);
  }
  return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, false);
}

}  // namespace chunkflow::parallel
