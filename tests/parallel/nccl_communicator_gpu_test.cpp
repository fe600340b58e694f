// The NCCL backend on one GPU: every Communicator call at world size 1 (NCCL refuses two ranks of
// one communicator on one GPU, so larger worlds are checked on multi-GPU machines and by review),
// CUDA and staged CPU tensors, bf16, a split, and a send/receive pair queued the way the
// pipeline queues them (send first, then receive: issued in one group). Skips, saying why, where
// the build has no NCCL or no GPU is usable.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include "core/error.h"
#include "kernels/device.h"
#include "parallel/nccl_communicator.h"
#include "tests/support/gpu_skip.h"
#include "tests/support/mpi_test_main.h"

namespace chunkflow::parallel {
namespace {

class NcclCommunicatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!built_with_nccl()) GTEST_SKIP() << "this build has no NCCL";
    CHUNKFLOW_SKIP_WITHOUT_CUDA();
    if (chunkflow::testing::test_world().size() != 1) GTEST_SKIP() << "one rank per GPU: run it without mpirun";
    nccl_ = nccl_communicator(chunkflow::testing::test_world(), 0);
  }
  static torch::TensorOptions cuda(torch::ScalarType dtype = torch::kFloat32) {
    return torch::TensorOptions().dtype(dtype).device(torch::kCUDA, 0);
  }
  std::unique_ptr<Communicator> nccl_;
};

TEST_F(NcclCommunicatorTest, CollectivesOfOneRankKeepTheValues) {
  EXPECT_EQ(nccl_->size(), 1);
  EXPECT_EQ(nccl_->rank(), 0);
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat64, torch::kInt64}) {
    torch::Tensor values = torch::arange(6, cuda(dtype));
    const torch::Tensor expected = values.clone();
    nccl_->all_reduce(values, ReduceOp::kSum);
    EXPECT_TRUE(torch::equal(values, expected)) << dtype;
    EXPECT_TRUE(torch::equal(nccl_->all_gather(values), expected)) << dtype;
    EXPECT_TRUE(torch::equal(nccl_->reduce_scatter(values, ReduceOp::kMax), expected)) << dtype;
    nccl_->broadcast(values, 0);
    EXPECT_TRUE(torch::equal(values, expected)) << dtype;
  }
  nccl_->barrier();
}

TEST_F(NcclCommunicatorTest, NonBlockingAllReduceIsVisibleAfterWait) {
  torch::Tensor values = torch::full({1 << 20}, 2.0, cuda());
  const auto request = nccl_->iall_reduce(values, ReduceOp::kSum);
  request->wait();
  EXPECT_EQ(values.sum().item<double>(), 2.0 * (1 << 20));
  EXPECT_TRUE(request->done());
}

TEST_F(NcclCommunicatorTest, CpuTensorsAreStagedThroughTheDevice) {
  torch::Tensor sums = torch::tensor({1.5, 2.5}, torch::kFloat64);
  nccl_->all_reduce(sums, ReduceOp::kSum);
  EXPECT_TRUE(sums.device().is_cpu());
  EXPECT_TRUE(torch::equal(sums, torch::tensor({1.5, 2.5}, torch::kFloat64)));
  const torch::Tensor gathered = nccl_->all_gather(torch::tensor({7}, torch::kInt64));
  EXPECT_TRUE(gathered.device().is_cpu());
  EXPECT_EQ(gathered.item<int64_t>(), 7);
}

TEST_F(NcclCommunicatorTest, SendThenReceiveToItselfDoesNotDeadlock) {
  // The pipeline's pattern: isend first (queued), then a blocking receive that issues both in
  // one NCCL group. Alone, the send would wait for a receive queued behind it.
  const torch::Tensor message = torch::randn({1000, 64}, cuda(torch::kBFloat16));
  const auto sent = nccl_->isend(message, 0, 7101);
  torch::Tensor received = torch::empty_like(message);
  nccl_->recv(received, 0, 7101);
  sent->wait();
  EXPECT_TRUE(torch::equal(received, message));
}

TEST_F(NcclCommunicatorTest, SplitGivesAWorkingSubCommunicator) {
  const std::unique_ptr<Communicator> sub = nccl_->split(0, 0);
  EXPECT_EQ(sub->size(), 1);
  torch::Tensor values = torch::ones({3}, cuda());
  sub->all_reduce(values, ReduceOp::kSum);
  EXPECT_TRUE(torch::equal(values, torch::ones({3}, cuda())));
  EXPECT_NE(sub->describe().find("NCCL"), std::string::npos);
}

TEST_F(NcclCommunicatorTest, TensorsOnAnotherDeviceAreRefusedByName) {
  if (torch::cuda::device_count() < 2) GTEST_SKIP() << "one GPU: no other device to misuse";
  torch::Tensor wrong = torch::ones({2}, torch::TensorOptions().device(torch::kCUDA, 1));
  EXPECT_THROW(nccl_->all_reduce(wrong, ReduceOp::kSum), core::Error);
}

}  // namespace
}  // namespace chunkflow::parallel
