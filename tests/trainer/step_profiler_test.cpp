// logging.profile_step: the profiled step writes a Kineto trace and a table, changes nothing the
// step computes, and the table's shares are of the step's wall time.
#include "trainer/step_profiler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "core/file_io.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tiny_run.h"
#include "trainer/trainer.h"

namespace chunkflow::trainer {
namespace {

TEST(StepProfilerTest, ProfiledStepWritesItsTraceAndTableAndTrainsExactlyAsWithout) {
  testing::TempDir plain_dir, profiled_dir;
  configs::Config plain = testing::tiny_run(plain_dir);
  plain.run.steps = 3;
  configs::Config profiled = testing::tiny_run(profiled_dir);
  profiled.run.steps = 3;
  profiled.logging.profile_step = 2;
  const std::vector<StepMetrics> expected = Trainer(plain).train();
  const std::vector<StepMetrics> got = Trainer(profiled).train();
  ASSERT_EQ(got.size(), expected.size());
  for (size_t step = 0; step < got.size(); ++step) EXPECT_EQ(got[step].loss, expected[step].loss) << step;

  const std::string folder = profiled.run.run_dir() + "/profile";
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(folder)) files.push_back(entry.path().filename().string());
  std::sort(files.begin(), files.end());
  EXPECT_EQ(files, (std::vector<std::string>{"step-2-rank-0.json", "step-2-rank-0.txt"}));

  const nlohmann::json trace = nlohmann::json::parse(core::read_file(folder + "/step-2-rank-0.json"));
  bool saw_matrix_product = false;
  for (const auto& event : trace.at("traceEvents")) {
    saw_matrix_product |= event.contains("name") && event["name"].get<std::string>().rfind("aten::mm", 0) == 0;
  }
  EXPECT_TRUE(saw_matrix_product) << "the step's matrix products are in the trace";
  const std::string table = core::read_file(folder + "/step-2-rank-0.txt");
  EXPECT_NE(table.find("CPU operators"), std::string::npos) << table;
  EXPECT_NE(table.find("aten::"), std::string::npos) << table;
}

TEST(StepProfilerTest, SummarySharesAreOfTheWallTimeAndShowTheGpuIdleShare) {
  StepProfile profile;
  profile.wall_seconds = 0.2;
  profile.device_busy_seconds = 0.05;
  profile.device_activities = {{"flash_fwd_kernel", 48, 0.03}, {"Memcpy HtoD (Pinned -> Device)", 10, 0.001}};
  profile.cpu_operators = {{"aten::mm", 100, 0.1}};
  const std::string table = profile.summary(1);
  EXPECT_NE(table.find("wall 200.0 ms; GPU busy 50.0 ms (25.0% of the wall time"), std::string::npos) << table;
  EXPECT_NE(table.find("   15.0%       30.00       48  flash_fwd_kernel"), std::string::npos) << table;
  EXPECT_EQ(table.find("Memcpy"), std::string::npos) << "top 1 only";
  EXPECT_NE(table.find("   50.0%      100.00      100  aten::mm"), std::string::npos) << table;
}

}  // namespace
}  // namespace chunkflow::trainer
