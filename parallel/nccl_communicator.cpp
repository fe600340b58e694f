// Communicator over NCCL; see nccl_communicator.h. Only this file includes <nccl.h>.
#include "parallel/nccl_communicator.h"

#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <nccl.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <vector>

#include "core/error.h"
#include "core/strings.h"

namespace chunkflow::parallel {
namespace {

using core::host_name;

ncclDataType_t nccl_type(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat32: return ncclFloat32;
    case torch::kFloat64: return ncclFloat64;
    case torch::kBFloat16: return ncclBfloat16;
    case torch::kFloat16: return ncclFloat16;
    case torch::kInt32: return ncclInt32;
    case torch::kInt64: return ncclInt64;
    case torch::kUInt8: return ncclUint8;
    default: CF_FAIL("NCCL communicator: unsupported dtype ", dtype);
  }
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kMin: return ncclMin;
  }
  return ncclSum;
}

class NcclCommunicator;

// A send queued by isend: issued (in a group with the next receive, or alone by a wait) later;
// `issued` is recorded on the communication stream right after it.
struct PendingSend {
  torch::Tensor tensor;
  int peer = 0;
  std::shared_ptr<at::cuda::CUDAEvent> issued;
};

class NcclRequest final : public Request {
 public:
  NcclRequest(NcclCommunicator* owner, std::shared_ptr<PendingSend> send) : owner_(owner), send_(std::move(send)) {}
  ~NcclRequest() override;
  void wait() override;
  bool done() override { return send_->issued != nullptr && send_->issued->query(); }

 private:
  NcclCommunicator* owner_;
  std::shared_ptr<PendingSend> send_;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, c10::DeviceIndex device, Communicator* bootstrap)
      : comm_(comm), device_(device), bootstrap_(bootstrap),
        stream_(c10::cuda::getStreamFromPool(/*isHighPriority=*/true, device)) {
    check(ncclCommUserRank(comm_, &rank_), "ncclCommUserRank", __FILE__, __LINE__);
    check(ncclCommCount(comm_, &size_), "ncclCommCount", __FILE__, __LINE__);
  }
  ~NcclCommunicator() override {
    // Outstanding sends must not outlive the communicator; while an exception unwinds the job is
    // about to be aborted, so do not wait for peers that may have failed.
    if (std::uncaught_exceptions() == 0 && !pending_.empty()) flush_sends();
    ncclCommDestroy(comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string describe() const override {
    return core::str_cat(host_name(), ":", ::getpid(), " rank ", rank_, "/", size_, " (NCCL, cuda:", device_, ")");
  }

  void all_reduce(torch::Tensor& tensor, ReduceOp op) override {
    torch::Tensor work = on_device(tensor, "all_reduce");
    collective([&] {
      check(ncclAllReduce(work.data_ptr(), work.data_ptr(), static_cast<size_t>(work.numel()),
                          nccl_type(work.scalar_type()), nccl_op(op), comm_, stream_.stream()),
            "ncclAllReduce", __FILE__, __LINE__);
    }, {work});
    write_back(tensor, work);
  }

  std::unique_ptr<Request> iall_reduce(torch::Tensor& tensor, ReduceOp op) override {
    // Queued on the communication stream: the caller's later work waits for it through wait().
    CF_CHECK(tensor.is_cuda() && tensor.is_contiguous(), "NCCL communicator iall_reduce: tensor must be a contiguous "
             "tensor on cuda:", device_, ", got ", tensor.device(), tensor.is_contiguous() ? "" : " (not contiguous)");
    torch::Tensor work = on_device(tensor, "iall_reduce");
    auto request = std::make_shared<PendingSend>();
    request->tensor = work;
    collective([&] {
      check(ncclAllReduce(work.data_ptr(), work.data_ptr(), static_cast<size_t>(work.numel()),
                          nccl_type(work.scalar_type()), nccl_op(op), comm_, stream_.stream()),
            "ncclAllReduce", __FILE__, __LINE__);
    }, {work}, /*caller_waits=*/false);
    request->issued = record_on_stream();
    return std::make_unique<NcclRequest>(this, std::move(request));
  }

  torch::Tensor all_gather(const torch::Tensor& tensor) override {
    const torch::Tensor work = on_device(tensor, "all_gather");
    std::vector<int64_t> shape = tensor.sizes().vec();
    CF_CHECK(!shape.empty(), "NCCL communicator all_gather: tensor needs at least one dimension");
    shape[0] *= size_;
    torch::Tensor gathered = torch::empty(shape, work.options());
    collective([&] {
      check(ncclAllGather(work.data_ptr(), gathered.data_ptr(), static_cast<size_t>(work.numel()),
                          nccl_type(work.scalar_type()), comm_, stream_.stream()),
            "ncclAllGather", __FILE__, __LINE__);
    }, {work, gathered});
    return gathered.to(tensor.device());
  }

  torch::Tensor reduce_scatter(const torch::Tensor& tensor, ReduceOp op) override {
    const torch::Tensor work = on_device(tensor, "reduce_scatter");
    CF_CHECK(tensor.dim() >= 1 && tensor.size(0) % size_ == 0, "NCCL communicator reduce_scatter: first dimension ",
             tensor.dim() >= 1 ? tensor.size(0) : 0, " is not a multiple of the group size ", size_);
    std::vector<int64_t> shape = tensor.sizes().vec();
    shape[0] /= size_;
    torch::Tensor block = torch::empty(shape, work.options());
    collective([&] {
      check(ncclReduceScatter(work.data_ptr(), block.data_ptr(), static_cast<size_t>(block.numel()),
                              nccl_type(work.scalar_type()), nccl_op(op), comm_, stream_.stream()),
            "ncclReduceScatter", __FILE__, __LINE__);
    }, {work, block});
    return block.to(tensor.device());
  }

  void broadcast(torch::Tensor& tensor, int root) override {
    torch::Tensor work = on_device(tensor, "broadcast");
    collective([&] {
      check(ncclBroadcast(work.data_ptr(), work.data_ptr(), static_cast<size_t>(work.numel()),
                          nccl_type(work.scalar_type()), root, comm_, stream_.stream()),
            "ncclBroadcast", __FILE__, __LINE__);
    }, {work});
    write_back(tensor, work);
  }

  void send(const torch::Tensor& tensor, int peer, int tag) override { isend(tensor, peer, tag)->wait(); }

  void recv(torch::Tensor& tensor, int peer, int /*tag*/) override {
    torch::Tensor work = on_device(tensor, "recv");
    enter();
    // The queued sends go in one group with this receive: a pair of ranks that each send, then
    // receive, would otherwise block in NCCL's point-to-point forever.
    check(ncclGroupStart(), "ncclGroupStart", __FILE__, __LINE__);
    issue_pending_sends();
    check(ncclRecv(work.data_ptr(), static_cast<size_t>(work.numel()), nccl_type(work.scalar_type()), peer, comm_,
                   stream_.stream()),
          "ncclRecv", __FILE__, __LINE__);
    check(ncclGroupEnd(), "ncclGroupEnd", __FILE__, __LINE__);
    mark_issued();
    keep_until_done(work);
    leave();
    write_back(tensor, work);
  }

  std::unique_ptr<Request> isend(const torch::Tensor& tensor, int peer, int /*tag*/) override {
    auto send = std::make_shared<PendingSend>();
    // A copy made on the caller's stream before the communication stream reads it (enter()).
    send->tensor = on_device(tensor, "isend");
    send->peer = peer;
    pending_.push_back(send);
    return std::make_unique<NcclRequest>(this, std::move(send));
  }

  void barrier() override {
    torch::Tensor token = torch::zeros({1}, torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA, device_));
    all_reduce(token, ReduceOp::kSum);
    stream_.synchronize();
  }

  std::unique_ptr<Communicator> split(int color, int key) override {
    flush_sends();
    ncclComm_t sub = nullptr;
    check(ncclCommSplit(comm_, color, key, &sub, nullptr), "ncclCommSplit", __FILE__, __LINE__);
    return std::make_unique<NcclCommunicator>(sub, device_, bootstrap_);
  }

  [[noreturn]] void abort(int code) override {
    ncclCommAbort(comm_);
    bootstrap_->abort(code);
    std::_Exit(code);  // not reached: the bootstrap's abort ends the process
  }

  // Issues the queued sends in a group of their own (a wait, or before a collective).
  void flush_sends() {
    if (pending_.empty()) return;
    enter();
    check(ncclGroupStart(), "ncclGroupStart", __FILE__, __LINE__);
    issue_pending_sends();
    check(ncclGroupEnd(), "ncclGroupEnd", __FILE__, __LINE__);
    mark_issued();
  }

  // The caller's current stream waits for `event` (the tensors are then usable there).
  void wait_for(at::cuda::CUDAEvent& event) const {
    event.block(c10::cuda::getCurrentCUDAStream(device_));
  }

 private:
  void check(ncclResult_t status, const char* call, const char* file, int line) const {
    if (status == ncclSuccess) return;
    const char* detail = comm_ != nullptr ? ncclGetLastError(comm_) : "";
    CF_FAIL("NCCL error on rank ", rank_, " (", host_name(), ", cuda:", device_, "): ", call, " failed at ", file, ":",
            line, ": ", ncclGetErrorString(status), detail != nullptr && *detail != '\0' ? core::str_cat(" (", detail, ")") : "");
  }

  // The tensor on this rank's device, contiguous: itself when it already is, else a copy
  // (CPU tensors: small host-side sums staged through the device).
  torch::Tensor on_device(const torch::Tensor& tensor, const char* operation) const {
    CF_CHECK(tensor.device().is_cpu() || (tensor.is_cuda() && tensor.device().index() == device_),
             "NCCL communicator ", operation, ": tensor must be on the CPU or cuda:", device_, ", got ", tensor.device());
    if (tensor.is_cuda() && tensor.is_contiguous()) return tensor;
    return tensor.to(torch::Device(torch::kCUDA, device_), /*non_blocking=*/false, /*copy=*/true).contiguous();
  }

  // Results of an in-place operation on a staged copy go back into the caller's tensor, on the
  // caller's stream (after leave(): it waits for the communication).
  static void write_back(torch::Tensor& tensor, const torch::Tensor& work) {
    if (!work.is_same(tensor)) tensor.copy_(work);
  }

  // Runs `issue` (an NCCL collective) on the communication stream after the caller's queued work;
  // the tensors stay allocated until it has run. caller_waits: the caller's stream then waits too.
  template <typename Issue>
  void collective(Issue&& issue, std::initializer_list<torch::Tensor> tensors, bool caller_waits = true) {
    flush_sends();
    enter();
    issue();
    for (const torch::Tensor& tensor : tensors) keep_until_done(tensor);
    if (caller_waits) leave();
  }

  void issue_pending_sends() {
    for (const auto& send : pending_) {
      keep_until_done(send->tensor);
      check(ncclSend(send->tensor.data_ptr(), static_cast<size_t>(send->tensor.numel()),
                     nccl_type(send->tensor.scalar_type()), send->peer, comm_, stream_.stream()),
            "ncclSend", __FILE__, __LINE__);
    }
  }

  void mark_issued() {
    if (pending_.empty()) return;
    const std::shared_ptr<at::cuda::CUDAEvent> issued = record_on_stream();
    for (const auto& send : pending_) send->issued = issued;
    pending_.clear();
  }

  std::shared_ptr<at::cuda::CUDAEvent> record_on_stream() {
    auto event = std::make_shared<at::cuda::CUDAEvent>();
    event->record(stream_);
    return event;
  }

  // The communication stream waits for what the caller queued so far (the tensors' producers).
  void enter() {
    at::cuda::CUDAEvent ready;
    ready.record(c10::cuda::getCurrentCUDAStream(device_));
    ready.block(stream_);
  }

  // The caller's stream waits for the communication queued so far.
  void leave() {
    at::cuda::CUDAEvent finished;
    finished.record(stream_);
    finished.block(c10::cuda::getCurrentCUDAStream(device_));
  }

  // The caching allocator must not hand the memory to other work before the communication
  // stream is done with it.
  void keep_until_done(const torch::Tensor& tensor) const {
    c10::cuda::CUDACachingAllocator::recordStream(tensor.storage().data_ptr(), stream_);
  }

  ncclComm_t comm_;
  c10::DeviceIndex device_;
  Communicator* bootstrap_;
  c10::cuda::CUDAStream stream_;
  int rank_ = 0, size_ = 1;
  std::vector<std::shared_ptr<PendingSend>> pending_;
};

NcclRequest::~NcclRequest() {
  // While an exception unwinds, main() is about to abort the job: do not wait on peers.
  if (std::uncaught_exceptions() == 0) wait();
}

void NcclRequest::wait() {
  if (send_->issued == nullptr) owner_->flush_sends();
  owner_->wait_for(*send_->issued);
}

}  // namespace

bool built_with_nccl() { return true; }

std::unique_ptr<Communicator> nccl_communicator(Communicator& bootstrap, int device_index) {
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_index));
  ncclUniqueId id;
  torch::Tensor id_bytes = torch::zeros({static_cast<int64_t>(sizeof(id))}, torch::kUInt8);
  if (bootstrap.rank() == 0) {
    const ncclResult_t status = ncclGetUniqueId(&id);
    CF_CHECK(status == ncclSuccess, "NCCL error on rank 0 (", host_name(), "): ncclGetUniqueId failed: ",
             ncclGetErrorString(status));
    std::memcpy(id_bytes.data_ptr(), &id, sizeof(id));
  }
  bootstrap.broadcast(id_bytes, 0);
  std::memcpy(&id, id_bytes.data_ptr(), sizeof(id));
  ncclComm_t comm = nullptr;
  const ncclResult_t status = ncclCommInitRank(&comm, bootstrap.size(), id, bootstrap.rank());
  CF_CHECK(status == ncclSuccess, "NCCL error on rank ", bootstrap.rank(), " (", host_name(), ", cuda:", device_index,
           "): ncclCommInitRank over ", bootstrap.size(), " ranks failed: ", ncclGetErrorString(status),
           status == ncclInvalidUsage ? " (two ranks on one GPU? NCCL needs one GPU per rank; use parallel.backend: mpi)"
                                      : "");
  return std::make_unique<NcclCommunicator>(comm, static_cast<c10::DeviceIndex>(device_index), &bootstrap);
}

}  // namespace chunkflow::parallel
