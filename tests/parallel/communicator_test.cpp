// The MPI communicator and the device mesh, run under `mpirun -np 4` (and alone, as a world of
// one). Every rank runs every test; the exit status is agreed over all ranks.
#include <gtest/gtest.h>

#include <memory>

#include "configs/parallel_config.h"
#include "core/error.h"
#include "parallel/device_mesh.h"
#include "tests/support/mpi_test_main.h"

namespace chunkflow::parallel {
namespace {

torch::Tensor filled(int64_t n, double value) { return torch::full({n}, value, torch::kFloat64); }

TEST(MpiCommunicatorTest, AllReduceSumsMaxesAndMinsOverTheGroup) {
  Communicator& world = chunkflow::testing::test_world();
  const int size = world.size(), rank = world.rank();
  torch::Tensor sum = filled(5, rank + 1);
  world.all_reduce(sum, ReduceOp::kSum);
  EXPECT_TRUE(torch::equal(sum, filled(5, size * (size + 1) / 2.0)));
  torch::Tensor maximum = torch::tensor({rank, -rank}, torch::kInt64);
  world.all_reduce(maximum, ReduceOp::kMax);
  EXPECT_EQ(maximum[0].item<int64_t>(), size - 1);
  EXPECT_EQ(maximum[1].item<int64_t>(), 0);
  torch::Tensor minimum = torch::tensor({static_cast<float>(rank)});
  world.all_reduce(minimum, ReduceOp::kMin);
  EXPECT_EQ(minimum.item<float>(), 0.0f);
}

TEST(MpiCommunicatorTest, AllGatherPlacesEachRankBlockInRankOrder) {
  Communicator& world = chunkflow::testing::test_world();
  const torch::Tensor mine = torch::full({2, 3}, static_cast<float>(world.rank()));
  const torch::Tensor gathered = world.all_gather(mine);
  ASSERT_EQ(gathered.size(0), 2 * world.size());
  for (int r = 0; r < world.size(); ++r) {
    EXPECT_TRUE(torch::equal(gathered.narrow(0, 2 * r, 2), torch::full({2, 3}, static_cast<float>(r))));
  }
}

TEST(MpiCommunicatorTest, ReduceScatterGivesEachRankTheSumOfItsBlock) {
  Communicator& world = chunkflow::testing::test_world();
  const int size = world.size();
  // Block b of rank r holds r + 10 b.
  torch::Tensor input = torch::empty({size, 4}, torch::kFloat64);
  for (int b = 0; b < size; ++b) input[b].fill_(world.rank() + 10.0 * b);
  const torch::Tensor block = world.reduce_scatter(input, ReduceOp::kSum);
  ASSERT_EQ(block.size(0), 1);
  EXPECT_TRUE(torch::allclose(block, torch::full({1, 4}, size * (size - 1) / 2.0 + 10.0 * world.rank() * size,
                                                 torch::kFloat64)));
  if (size > 1) {
    EXPECT_THROW(world.reduce_scatter(torch::zeros({size + 1}), ReduceOp::kSum), core::Error);
  }
}

TEST(MpiCommunicatorTest, BroadcastAndRingSendReceive) {
  Communicator& world = chunkflow::testing::test_world();
  torch::Tensor value = torch::tensor({world.rank() == 0 ? 42 : -1}, torch::kInt32);
  world.broadcast(value, 0);
  EXPECT_EQ(value.item<int32_t>(), 42);
  if (world.size() < 2) return;
  const int next = (world.rank() + 1) % world.size();
  const int previous = (world.rank() + world.size() - 1) % world.size();
  torch::Tensor received = torch::empty({3});
  // Even ranks send first, odd ranks receive first: no deadlock on blocking calls.
  if (world.rank() % 2 == 0) {
    world.send(torch::full({3}, static_cast<float>(world.rank())), next, 7);
    world.recv(received, previous, 7);
  } else {
    world.recv(received, previous, 7);
    world.send(torch::full({3}, static_cast<float>(world.rank())), next, 7);
  }
  EXPECT_TRUE(torch::equal(received, torch::full({3}, static_cast<float>(previous))));
}

TEST(MpiCommunicatorTest, RejectsTensorsItCannotSend) {
  Communicator& world = chunkflow::testing::test_world();
  torch::Tensor strided = torch::zeros({4, 4}).t();
  EXPECT_THROW(world.all_reduce(strided, ReduceOp::kSum), core::Error);
  torch::Tensor complex = torch::zeros({2}, torch::kComplexFloat);
  EXPECT_THROW(world.all_reduce(complex, ReduceOp::kSum), core::Error);
}

// Mixed precision sends bf16 activations and K/V rows: 16-bit floats travel as 16-bit words and
// are widened to float32 where MPI reduces them, then come back in their own dtype.
TEST(MpiCommunicatorTest, SixteenBitFloatsTravelAsWordsAndReduceInFloat32) {
  Communicator& world = chunkflow::testing::test_world();
  const int size = world.size(), rank = world.rank();
  for (const auto dtype : {torch::kBFloat16, torch::kFloat16}) {
    torch::Tensor summed = torch::full({3}, 1.5 * (rank + 1), dtype);
    world.all_reduce(summed, ReduceOp::kSum);
    EXPECT_EQ(summed.scalar_type(), dtype);
    EXPECT_TRUE(torch::equal(summed, torch::full({3}, 1.5 * size * (size + 1) / 2, dtype)));

    const torch::Tensor gathered = world.all_gather(torch::full({2}, rank + 0.25, dtype));
    EXPECT_EQ(gathered.scalar_type(), dtype);
    for (int r = 0; r < size; ++r) EXPECT_TRUE(torch::equal(gathered.narrow(0, 2 * r, 2), torch::full({2}, r + 0.25, dtype)));

    const torch::Tensor block = world.reduce_scatter(torch::arange(2 * size, torch::kFloat).to(dtype), ReduceOp::kSum);
    EXPECT_EQ(block.scalar_type(), dtype);
    EXPECT_TRUE(torch::equal(block, (torch::arange(2 * rank, 2 * rank + 2, torch::kFloat) * size).to(dtype)));

    torch::Tensor shared = torch::full({4}, rank == 0 ? 3.0 : -1.0, dtype);
    world.broadcast(shared, 0);
    EXPECT_TRUE(torch::equal(shared, torch::full({4}, 3.0, dtype)));
  }
}

configs::ParallelConfig layout(int64_t dp, int64_t cp, int64_t pp, const std::string& order) {
  configs::ParallelConfig config;
  config.dp = dp;
  config.cp = cp;
  config.pp = pp;
  config.order = order;
  return config;
}

TEST(DeviceMeshTest, LayoutPutsTheInnermostAxisOnConsecutiveRanks) {
  const auto config = layout(2, 1, 2, "dp,cp,pp");
  EXPECT_EQ(mesh_coordinates(1, config), (MeshCoordinates{0, 0, 1}));
  EXPECT_EQ(mesh_coordinates(2, config), (MeshCoordinates{1, 0, 0}));
  const auto swapped = layout(2, 1, 2, "pp,cp,dp");
  EXPECT_EQ(mesh_coordinates(1, swapped), (MeshCoordinates{1, 0, 0}));
  const auto big = layout(2, 3, 4, "cp,dp,pp");
  for (int rank = 0; rank < 24; ++rank) EXPECT_EQ(mesh_rank(mesh_coordinates(rank, big), big), rank);
  // tp, unless named, is innermost: tensor-parallel peers are consecutive ranks.
  auto tensor_parallel = layout(2, 1, 2, "dp,cp,pp");
  tensor_parallel.tp = 2;
  EXPECT_EQ(mesh_coordinates(1, tensor_parallel), (MeshCoordinates{0, 0, 0, 1}));
  EXPECT_EQ(mesh_coordinates(2, tensor_parallel), (MeshCoordinates{0, 0, 1, 0}));
  EXPECT_EQ(mesh_coordinates(4, tensor_parallel), (MeshCoordinates{1, 0, 0, 0}));
  tensor_parallel.order = "tp,dp,cp,pp";
  EXPECT_EQ(mesh_coordinates(1, tensor_parallel), (MeshCoordinates{0, 0, 1, 0}));
  EXPECT_EQ(mesh_coordinates(4, tensor_parallel), (MeshCoordinates{0, 0, 0, 1}));
  for (int rank = 0; rank < 8; ++rank) EXPECT_EQ(mesh_rank(mesh_coordinates(rank, tensor_parallel), tensor_parallel), rank);
}

TEST(DeviceMeshTest, GroupsReduceOnlyAlongTheirAxis) {
  Communicator& world = chunkflow::testing::test_world();
  if (world.size() != 4) GTEST_SKIP() << "needs 4 ranks (run under mpirun -np 4)";
  DeviceMesh mesh(layout(2, 1, 2, "dp,cp,pp"), world);
  EXPECT_EQ(mesh.dp_group().size(), 2);
  EXPECT_EQ(mesh.pp_group().size(), 2);
  EXPECT_EQ(mesh.cp_group().size(), 1);
  EXPECT_EQ(mesh.dp_group().rank(), mesh.coordinates().dp);
  EXPECT_EQ(mesh.pp_group().rank(), mesh.coordinates().pp);
  // Summing world ranks over the dp group: ranks {pp, 2 + pp} -> 2 + 2 pp.
  torch::Tensor value = torch::tensor({static_cast<double>(world.rank())});
  mesh.dp_group().all_reduce(value, ReduceOp::kSum);
  EXPECT_EQ(value.item<double>(), 2.0 + 2.0 * mesh.coordinates().pp);
}

TEST(DeviceMeshTest, WrongWorldSizeNamesEveryDegree) {
  Communicator& world = chunkflow::testing::test_world();
  try {
    DeviceMesh mesh(layout(2, 2, 2, "dp,cp,pp"), world);
    FAIL() << "a mesh of 8 ranks was built on " << world.size();
  } catch (const core::Error& error) {
    const std::string message = error.what();
    for (const char* part : {"dp", "cp", "pp", "8"}) EXPECT_NE(message.find(part), std::string::npos) << message;
  }
}

}  // namespace
}  // namespace chunkflow::parallel
