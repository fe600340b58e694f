// Communicator over MPI; see mpi_communicator.h. Only this file includes <mpi.h>.
#include "parallel/mpi_communicator.h"

#include <mpi.h>
#include <unistd.h>

#include <cstdlib>
#include <exception>

#include "core/error.h"

namespace chunkflow::parallel {
namespace {

// Throws core::Error with the rank, host, the failing call (file:line) and MPI's own text.
#define CF_MPI_CHECK(call, communicator)                                                       \
  do {                                                                                         \
    const int mpi_status = (call);                                                             \
    if (mpi_status != MPI_SUCCESS) throw_mpi_error(mpi_status, #call, __FILE__, __LINE__, communicator); \
  } while (false)

std::string host_name() {
  char name[256] = {};
  ::gethostname(name, sizeof(name) - 1);
  return name;
}

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
  CF_CHECK(tensor.device().is_cpu(), "MPI communicator ", operation, ": tensors must be on the CPU, got ",
           tensor.device(), " (CUDA tensors go through the NCCL backend)");
  CF_CHECK(tensor.is_contiguous(), "MPI communicator ", operation, ": tensor must be contiguous");
  CF_CHECK(tensor.numel() <= std::numeric_limits<int>::max(), "MPI communicator ", operation, ": ",
           tensor.numel(), " elements exceed MPI's int count");
  return static_cast<int>(tensor.numel());
}

class MpiRequest final : public Request {
 public:
  MpiRequest(torch::Tensor tensor, MPI_Request request, MPI_Comm communicator)
      : tensor_(std::move(tensor)), request_(request), communicator_(communicator) {}
  ~MpiRequest() override {
    if (request_ == MPI_REQUEST_NULL) return;
    if (std::uncaught_exceptions() > 0) {
      // Unwinding after an error: the peer this operation needs may be the one that failed, and
      // main() is about to abort the job. Do not wait; keep the buffer alive for MPI instead.
      new torch::Tensor(tensor_);  // deliberately leaked
      return;
    }
    MPI_Wait(&request_, MPI_STATUS_IGNORE);
  }
  void wait() override {
    if (request_ != MPI_REQUEST_NULL) CF_MPI_CHECK(MPI_Wait(&request_, MPI_STATUS_IGNORE), communicator_);
  }
  bool done() override {
    if (request_ == MPI_REQUEST_NULL) return true;
    int completed = 0;
    CF_MPI_CHECK(MPI_Test(&request_, &completed, MPI_STATUS_IGNORE), communicator_);
    return completed != 0;
  }

 private:
  torch::Tensor tensor_;  // the buffer MPI uses until the operation completes
  MPI_Request request_;
  MPI_Comm communicator_;
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
    const int count = checked_count(tensor, "all_reduce");
    CF_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, tensor.data_ptr(), count, mpi_type(tensor), mpi_op(op), communicator_),
                 communicator_);
  }

  std::unique_ptr<Request> iall_reduce(torch::Tensor& tensor, ReduceOp op) override {
    const int count = checked_count(tensor, "iall_reduce");
    MPI_Request request = MPI_REQUEST_NULL;
    CF_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, tensor.data_ptr(), count, mpi_type(tensor), mpi_op(op), communicator_,
                                &request),
                 communicator_);
    return std::make_unique<MpiRequest>(tensor, request, communicator_);
  }

  torch::Tensor all_gather(const torch::Tensor& tensor) override {
    const int count = checked_count(tensor, "all_gather");
    std::vector<int64_t> shape = tensor.sizes().vec();
    CF_CHECK(!shape.empty(), "MPI communicator all_gather: tensor needs at least one dimension");
    shape[0] *= size_;
    torch::Tensor gathered = torch::empty(shape, tensor.options());
    CF_MPI_CHECK(MPI_Allgather(tensor.data_ptr(), count, mpi_type(tensor), gathered.data_ptr(), count,
                               mpi_type(tensor), communicator_),
                 communicator_);
    return gathered;
  }

  torch::Tensor reduce_scatter(const torch::Tensor& tensor, ReduceOp op) override {
    checked_count(tensor, "reduce_scatter");
    CF_CHECK(tensor.dim() >= 1 && tensor.size(0) % size_ == 0, "MPI communicator reduce_scatter: first dimension ",
             tensor.dim() >= 1 ? tensor.size(0) : 0, " is not a multiple of the group size ", size_);
    std::vector<int64_t> shape = tensor.sizes().vec();
    shape[0] /= size_;
    torch::Tensor block = torch::empty(shape, tensor.options());
    CF_MPI_CHECK(MPI_Reduce_scatter_block(tensor.data_ptr(), block.data_ptr(), static_cast<int>(block.numel()),
                                          mpi_type(tensor), mpi_op(op), communicator_),
                 communicator_);
    return block;
  }

  void broadcast(torch::Tensor& tensor, int root) override {
    const int count = checked_count(tensor, "broadcast");
    CF_MPI_CHECK(MPI_Bcast(tensor.data_ptr(), count, mpi_type(tensor), root, communicator_), communicator_);
  }

  void send(const torch::Tensor& tensor, int peer, int tag) override {
    const int count = checked_count(tensor, "send");
    CF_MPI_CHECK(MPI_Send(tensor.data_ptr(), count, mpi_type(tensor), peer, tag, communicator_), communicator_);
  }

  void recv(torch::Tensor& tensor, int peer, int tag) override {
    const int count = checked_count(tensor, "recv");
    MPI_Status status;
    CF_MPI_CHECK(MPI_Recv(tensor.data_ptr(), count, mpi_type(tensor), peer, tag, communicator_, &status),
                 communicator_);
    int received = 0;
    MPI_Get_count(&status, mpi_type(tensor), &received);
    CF_CHECK(received == count, "MPI communicator recv on rank ", rank_, ": expected ", count,
             " elements from rank ", peer, " (tag ", tag, "), got ", received);
  }

  std::unique_ptr<Request> isend(const torch::Tensor& tensor, int peer, int tag) override {
    const int count = checked_count(tensor, "isend");
    MPI_Request request = MPI_REQUEST_NULL;
    CF_MPI_CHECK(MPI_Isend(tensor.data_ptr(), count, mpi_type(tensor), peer, tag, communicator_, &request),
                 communicator_);
    return std::make_unique<MpiRequest>(tensor, request, communicator_);
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
    int provided = 0;
    CF_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) == MPI_SUCCESS, "MPI_Init_thread failed on ",
             host_name());
    std::atexit(finalize_at_exit);
  }
  return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, false);
}

}  // namespace chunkflow::parallel
