// main() for multi-rank tests; see mpi_test_main.h.
#include "tests/support/mpi_test_main.h"

#include <gtest/gtest.h>

#include <memory>

#include "parallel/mpi_communicator.h"

namespace chunkflow::testing {
namespace {
parallel::Communicator* g_world = nullptr;
}  // namespace

parallel::Communicator& test_world() { return *g_world; }

}  // namespace chunkflow::testing

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  std::unique_ptr<chunkflow::parallel::Communicator> world = chunkflow::parallel::mpi_world(&argc, &argv);
  chunkflow::testing::g_world = world.get();
  if (world->rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  torch::Tensor failed = torch::tensor({RUN_ALL_TESTS() != 0 ? 1 : 0}, torch::kInt32);
  world->all_reduce(failed, chunkflow::parallel::ReduceOp::kMax);
  return failed.item<int32_t>();
}
