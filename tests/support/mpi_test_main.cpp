// main() for multi-rank tests; see mpi_test_main.h.
#include "tests/support/mpi_test_main.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "parallel/mpi_communicator.h"

namespace chunkflow::testing {
namespace {
parallel::Communicator* g_world = nullptr;

// Every rank reports its own failures (only rank 0 prints the usual output). A fatal failure
// (ASSERT_*, an exception) leaves the test body early, and the other ranks would wait for this
// one in their next collective forever: end the whole job instead, with the failure printed.
class RankFailureListener : public ::testing::EmptyTestEventListener {
 public:
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", g_world->rank(),
                 result.file_name() != nullptr ? result.file_name() : "?", result.line_number(), result.message());
    std::fflush(stderr);
    if (result.fatally_failed() && g_world->size() > 1) {
      std::fprintf(stderr, "[rank %d] fatal failure: aborting every rank so that none waits forever\n", g_world->rank());
      std::fflush(stderr);
      g_world->abort(1);
    }
  }
};
}  // namespace

parallel::Communicator& test_world() { return *g_world; }

}  // namespace chunkflow::testing

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  std::unique_ptr<chunkflow::parallel::Communicator> world = chunkflow::parallel::mpi_world(&argc, &argv);
  chunkflow::testing::g_world = world.get();
  // ctest names the world its command launches: a mismatched mpiexec would otherwise leave every
  // multi-rank test skipping, and the run green.
  if (const char* expected = std::getenv("CHUNKFLOW_TEST_WORLD_SIZE");
      expected != nullptr && std::to_string(world->size()) != expected) {
    std::fprintf(stderr, "[rank %d] CHUNKFLOW_TEST_WORLD_SIZE=%s but this test was launched with %d rank(s): check "
                 "mpiexec -np (MPIEXEC_NUMPROC_FLAG) and that the ranks joined one world\n", world->rank(), expected,
                 world->size());
    return 1;
  }
  auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (world->rank() != 0) delete listeners.Release(listeners.default_result_printer());
  listeners.Append(new chunkflow::testing::RankFailureListener);
  torch::Tensor failed = torch::tensor({RUN_ALL_TESTS() != 0 ? 1 : 0}, torch::kInt32);
  world->all_reduce(failed, chunkflow::parallel::ReduceOp::kMax);
  return failed.item<int32_t>();
}
