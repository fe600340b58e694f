// run.device and parallel.backend resolution: which device and communicator a rank gets, and the
// errors that name the key when the choice cannot work. (On a GPU machine, gpu_training_gpu_test
// trains on the device this resolves to.)
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>

#include "configs/config_error.h"
#include "kernels/device.h"
#include "tests/support/expect_error.h"
#include "trainer/device_setup.h"

namespace chunkflow::trainer {
namespace {

// ConfigError is a core::Error: the shared helper catches it.
using testing::error_message;

TEST(DeviceSetupTest, CpuIsTheCpuAndAutoPicksAGpuOnlyWhenOneIsUsable) {
  EXPECT_TRUE(resolve_training_device("cpu", 3).is_cpu());
  const torch::Device automatic = resolve_training_device("auto", 0);
  EXPECT_EQ(automatic.is_cuda(), kernels::built_with_cuda() && kernels::cuda_device_count() > 0);
}

TEST(DeviceSetupTest, CudaWithoutAUsableGpuNamesTheKeyAndWhy) {
  if (kernels::built_with_cuda() && kernels::cuda_device_count() > 0) {
    GTEST_SKIP() << "a GPU is usable here: cuda resolves (gpu_training_gpu_test covers it)";
  }
  const std::string message = error_message([] { resolve_training_device("cuda", 0); });
  EXPECT_NE(message.find("run.device = cuda"), std::string::npos) << message;
  EXPECT_NE(message.find(kernels::built_with_cuda() ? "no GPU is usable" : "no CUDA kernels"), std::string::npos)
      << message;
  EXPECT_NE(error_message([] { resolve_training_device("tpu", 0); }).find("run.device must be auto, cpu or cuda"),
            std::string::npos);
}

TEST(DeviceSetupTest, LocalRankAndNodeSizeComeFromTheLauncher) {
  ::setenv("OMPI_COMM_WORLD_LOCAL_RANK", "3", 1);
  ::setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "4", 1);
  EXPECT_EQ(local_rank_from_environment(), 3);
  EXPECT_EQ(local_world_size_from_environment(), 4);
  ::setenv("OMPI_COMM_WORLD_LOCAL_RANK", "x", 1);
  ::setenv("SLURM_LOCALID", "2", 1);
  EXPECT_EQ(local_rank_from_environment(), 2) << "an unreadable value falls through to the next launcher's";
  ::unsetenv("OMPI_COMM_WORLD_LOCAL_RANK");
  ::unsetenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  ::unsetenv("SLURM_LOCALID");
}

TEST(DeviceSetupTest, NcclOnlyWhereEveryRankHasItsOwnGpu) {
  const torch::Device cuda(torch::kCUDA, 0), cpu(torch::kCPU);
  EXPECT_EQ(choose_communication_backend("auto", cuda, 4, 8, true), "nccl");
  EXPECT_EQ(choose_communication_backend("auto", cuda, 4, 1, true), "mpi") << "four ranks share one GPU";
  EXPECT_EQ(choose_communication_backend("auto", cuda, 0, 8, true), "mpi") << "node size unknown";
  EXPECT_EQ(choose_communication_backend("auto", cuda, 2, 8, false), "mpi") << "build without NCCL";
  EXPECT_EQ(choose_communication_backend("auto", cpu, 2, 8, true), "mpi");
  EXPECT_EQ(choose_communication_backend("mpi", cuda, 2, 8, true), "mpi");
  EXPECT_EQ(choose_communication_backend("nccl", cuda, 2, 1, true), "nccl") << "asked for: NCCL's own error follows";
  const std::string on_cpu = error_message([&] { choose_communication_backend("nccl", cpu, 2, 0, true); });
  EXPECT_NE(on_cpu.find("parallel.backend = nccl needs CUDA tensors"), std::string::npos) << on_cpu;
  const std::string no_nccl = error_message([&] { choose_communication_backend("nccl", cuda, 2, 2, false); });
  EXPECT_NE(no_nccl.find("this build has no NCCL"), std::string::npos) << no_nccl;
}

TEST(DeviceSetupTest, OutOfMemoryNamesTheStepTheKeysToChangeAndTheAllocatorsWords) {
  configs::ChunkingConfig chunking;
  chunking.chunk_size = 8192;
  chunking.resident_chunks = 4;
  const std::string allocator = "CUDA out of memory. Tried to allocate 1.51 GiB. GPU 0 has a total capacity of 139.80 "
                                "GiB of which 1.44 GiB is free.\nframe #0: c10::Error::Error(...)";
  const std::string message = describe_out_of_memory(chunking, {7, 27, 459, 123045, "cuda:0 (NVIDIA H200)"}, allocator);
  for (const char* part : {"step 7 ran out of memory on cuda:0 (NVIDIA H200)", "27 chunks of 459 sequences",
                           "the longest 123045 tokens", "chunking.strategy = chunkflow",
                           "chunking.chunk_size = 8192, chunking.resident_chunks = 4",
                           "lower chunking.resident_chunks", "of which 1.44 GiB is free."}) {
    EXPECT_NE(message.find(part), std::string::npos) << part << "\n" << message;
  }
  EXPECT_EQ(message.find("frame #0"), std::string::npos) << "only the allocator's first line";

  chunking.strategy = "pad_to_longest";
  chunking.micro_batch_sequences = 4;
  EXPECT_NE(describe_out_of_memory(chunking, {}, allocator).find("lower chunking.micro_batch_sequences"), std::string::npos);
}

TEST(DeviceSetupTest, AllocationFailuresAreRecognisedAndOtherErrorsAreNot) {
  // The CPU allocator's failure: a request no machine can meet fails at once, without touching memory.
  bool recognised = false;
  try {
    (void)torch::empty({int64_t{1} << 60}, torch::kUInt8);
  } catch (const std::exception& error) {
    recognised = is_out_of_memory(error);
  }
  EXPECT_TRUE(recognised);
  EXPECT_FALSE(is_out_of_memory(std::runtime_error("some other failure")));
}

TEST(DeviceSetupTest, BusyTimerSumsItsIntervalsAndLeavesOutTheGaps) {
  DeviceBusyTimer timer(torch::kCPU);
  const auto sleep = [](int milliseconds) { std::this_thread::sleep_for(std::chrono::milliseconds(milliseconds)); };
  const auto start = std::chrono::steady_clock::now();
  timer.begin();
  sleep(30);
  timer.end();
  sleep(200);  // a gap: not counted
  timer.begin();
  sleep(30);
  timer.end();
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double busy = timer.seconds();
  EXPECT_GE(busy, 0.060);
  EXPECT_LE(busy, wall - 0.200);  // the gap is left out, however slow the machine
  EXPECT_EQ(timer.seconds(), 0.0) << "seconds() starts a new sum";
}

}  // namespace
}  // namespace chunkflow::trainer
