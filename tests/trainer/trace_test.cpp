// logging.trace: the trainer writes a Chrome-trace JSON timeline per rank with one span per chunk
// forward and per chunk backward (recompute + backward marked as such), the planning, optimizer
// and checkpoint spans, lane names, and no overlapping compute spans.
#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/file_io.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tiny_run.h"
#include "trainer/trace.h"
#include "trainer/trainer.h"

namespace chunkflow::trainer {
namespace {

TEST(TraceTest, EveryChunkForwardAndBackwardIsASpanOnTheComputeLane) {
  testing::TempDir dir;
  configs::Config config = testing::tiny_run(dir);
  config.run.steps = 3;
  config.logging.trace = true;
  Trainer trainer(config);
  int64_t chunks = 0, recomputed = 0;
  for (const auto& metrics : trainer.train()) {
    chunks += metrics.chunks;
    recomputed += metrics.recomputed_chunks;
  }
  ASSERT_GT(recomputed, 0) << "tiny_run should recompute some chunks (resident_chunks 1)";

  const nlohmann::json trace = nlohmann::json::parse(core::read_file(config.run.run_dir() + "/trace/rank-0.json"));
  int64_t forwards = 0, backwards = 0, recomputes = 0, optimizer_steps = 0, plans = 0, checkpoints = 0;
  std::vector<std::string> lanes;
  std::vector<std::pair<int64_t, int64_t>> compute;
  for (const auto& event : trace.at("traceEvents")) {
    if (event.at("ph") == "M") {
      if (event.at("name") == "thread_name") lanes.push_back(event.at("args").at("name"));
      continue;
    }
    ASSERT_EQ(event.at("ph"), "X");
    ASSERT_GE(event.at("ts").get<int64_t>(), 0);
    ASSERT_GE(event.at("dur").get<int64_t>(), 0);
    const std::string category = event.at("cat");
    forwards += category == "forward";
    backwards += category == "backward";
    recomputes += category == "recompute";
    optimizer_steps += category == "optimizer";
    plans += category == "plan";
    checkpoints += category == "checkpoint";
    if (event.at("tid") == TraceRecorder::kCompute) {
      compute.emplace_back(event.at("ts").get<int64_t>(), event.at("ts").get<int64_t>() + event.at("dur").get<int64_t>());
    }
  }
  EXPECT_EQ(forwards, chunks);
  EXPECT_EQ(backwards + recomputes, chunks);
  EXPECT_EQ(recomputes, recomputed);
  EXPECT_EQ(optimizer_steps, 3);
  EXPECT_EQ(plans, 3);
  EXPECT_EQ(checkpoints, 1);  // after the last step
  EXPECT_EQ(lanes, (std::vector<std::string>{"compute", "wait", "step"}));
  std::sort(compute.begin(), compute.end());
  for (size_t index = 1; index < compute.size(); ++index) {
    EXPECT_LE(compute[index - 1].second, compute[index].first) << "compute spans overlap at " << index;
  }
}

TEST(TraceTest, AnEmptyRecorderWritesValidJson) {
  testing::TempDir dir;
  const TraceRecorder recorder(3, TraceRecorder::Clock::now());
  recorder.write(dir.file("t.json"));
  const nlohmann::json trace = nlohmann::json::parse(core::read_file(dir.file("t.json")));
  EXPECT_EQ(trace.at("traceEvents").size(), 5u);  // process name, sort index, three lanes
  EXPECT_EQ(trace.at("traceEvents")[0].at("args").at("name"), "rank 3");
}

}  // namespace
}  // namespace chunkflow::trainer
