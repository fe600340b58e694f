// The state-aware 1F1B schedule: complete, ordered as the state needs, bounded in flight, never
// deadlocking (adversarial plans through the simulator), with the textbook bubble on uniform work.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "core/random.h"
#include "parallel/pipeline_schedule.h"
#include "tests/support/expect_error.h"

namespace chunkflow::parallel {
namespace {

using Kind = PipelineOp::Kind;

std::vector<int32_t> all_groups(const data::ChunkPlan& plan) {
  std::vector<int32_t> groups(plan.groups().size());
  for (size_t g = 0; g < groups.size(); ++g) groups[g] = static_cast<int32_t>(g);
  return groups;
}

double unit_cost(int, const PipelineOp& op) { return op.kind == Kind::kForward ? 1.0 : (op.recompute ? 3.0 : 2.0); }

TEST(PipelineScheduleTest, UniformChunksHaveTheTextbookOneFOneBBubble) {
  // m standalone chunks of equal cost, p stages, backward = 2 forwards: bubble (p-1)/(m+p-1).
  for (const int stages : {1, 2, 4, 8}) {
    for (const int64_t chunks : {1, 4, 16, 64}) {
      std::vector<data::PlanSequence> sequences(static_cast<size_t>(chunks), data::PlanSequence{10, {}});
      const data::ChunkPlan plan = data::build_chunk_plan(sequences, 10);
      const auto schedule = pipeline_schedule(plan, all_groups(plan), 1, stages);
      const PipelineSimulation simulation =
          simulate_pipeline(schedule, [](int, const PipelineOp& op) { return op.kind == Kind::kForward ? 1.0 : 2.0; });
      const double expected = static_cast<double>(stages - 1) / static_cast<double>(chunks + stages - 1);
      EXPECT_NEAR(simulation.bubble_ratio, expected, 1e-12) << stages << " stages, " << chunks << " chunks";
      EXPECT_DOUBLE_EQ(simulation.step_seconds, 3.0 * static_cast<double>(chunks + stages - 1));
    }
  }
}

TEST(PipelineScheduleTest, RandomAdversarialPlansAreCompleteOrderedAndNeverDeadlock) {
  core::Rng rng(77);
  for (int trial = 0; trial < 1500; ++trial) {
    const int64_t chunk_size = 1 + static_cast<int64_t>(rng.below(16));
    std::vector<data::PlanSequence> sequences;
    const int count = 1 + static_cast<int>(rng.below(12));
    for (int i = 0; i < count; ++i) {
      // Mixes of tiny sequences and split ones of up to 12 chunks, in random order.
      const uint64_t limit = static_cast<uint64_t>(rng.uniform() < 0.4 ? 12 * chunk_size : chunk_size);
      sequences.push_back({static_cast<int64_t>(rng.below(limit + 1)), {}});
    }
    const data::ChunkPlan plan = data::build_chunk_plan(sequences, chunk_size, rng.uniform() < 0.5);
    std::vector<int32_t> groups = all_groups(plan);
    // A DP rank gets groups in any order.
    for (size_t i = groups.size(); i > 1; --i) std::swap(groups[i - 1], groups[rng.below(i)]);
    if (rng.uniform() < 0.3 && !groups.empty()) groups.resize(rng.below(groups.size() + 1));
    const int stages = 1 + static_cast<int>(rng.below(8));
    const int64_t resident = 1 + static_cast<int64_t>(rng.below(4));
    const int64_t extra = rng.uniform() < 0.5 ? 0 : static_cast<int64_t>(rng.below(4));
    const auto schedule = pipeline_schedule(plan, groups, resident, stages, extra);
    ASSERT_EQ(schedule.size(), static_cast<size_t>(stages));

    std::set<int32_t> chunks;
    for (const int32_t group : groups) {
      for (int32_t c = 0; c < plan.groups()[static_cast<size_t>(group)].chunk_count; ++c) {
        chunks.insert(plan.groups()[static_cast<size_t>(group)].first_chunk + c);
      }
    }
    std::vector<PipelineOp> forwards_of_stage0, backwards_of_stage0;
    for (int stage = 0; stage < stages; ++stage) {
      std::map<int32_t, int> forwarded_at, backwarded_at;
      std::vector<PipelineOp> forwards, backwards;
      int in_flight = 0, most_in_flight = 0;
      const auto& ops = schedule[static_cast<size_t>(stage)];
      for (int position = 0; position < static_cast<int>(ops.size()); ++position) {
        const PipelineOp& op = ops[static_cast<size_t>(position)];
        if (op.kind == Kind::kForward) {
          ASSERT_TRUE(forwarded_at.emplace(op.chunk, position).second) << "chunk " << op.chunk << " forwarded twice";
          forwards.push_back(op);
          most_in_flight = std::max(most_in_flight, ++in_flight);
        } else {
          ASSERT_TRUE(forwarded_at.count(op.chunk)) << "backward before forward";
          ASSERT_TRUE(backwarded_at.emplace(op.chunk, position).second);
          ASSERT_NE(op.recompute, forwarded_at.count(op.chunk) && [&] {
            for (const auto& f : forwards) if (f.chunk == op.chunk) return f.keep_activations;
            return false;
          }()) << "recompute exactly when the forward kept no activations";
          backwards.push_back(op);
          --in_flight;
        }
      }
      ASSERT_EQ(forwarded_at.size(), chunks.size());
      ASSERT_EQ(backwarded_at.size(), chunks.size());
      // State order: a split sequence forwards in order and backwards in reverse, all of its
      // backwards after all of its forwards.
      for (const int32_t group : groups) {
        const data::ChunkGroup& g = plan.groups()[static_cast<size_t>(group)];
        for (int32_t c = g.first_chunk; c + 1 < g.first_chunk + g.chunk_count; ++c) {
          ASSERT_LT(forwarded_at[c], forwarded_at[c + 1]);
          ASSERT_GT(backwarded_at[c], backwarded_at[c + 1]);
        }
        ASSERT_LT(forwarded_at[g.first_chunk + g.chunk_count - 1], backwarded_at[g.first_chunk + g.chunk_count - 1]);
      }
      // Every stage runs the same forward order and the same backward order.
      if (stage == 0) {
        forwards_of_stage0 = forwards;
        backwards_of_stage0 = backwards;
      } else {
        ASSERT_EQ(forwards, forwards_of_stage0);
        ASSERT_EQ(backwards, backwards_of_stage0);
      }
      // 1F1B memory bound: without split sequences at most stages - stage chunks in flight.
      if (plan.split_sequences() == 0) {
        ASSERT_LE(most_in_flight, stages - stage + extra);
      }
    }
    const PipelineSimulation simulation = simulate_pipeline(schedule, unit_cost);  // throws on deadlock
    ASSERT_GE(simulation.bubble_ratio, 0.0);
    ASSERT_LT(simulation.bubble_ratio, 1.0 + 1e-12);
  }
}

TEST(PipelineScheduleTest, ExtraChunksInFlightFillTheWaitsAroundSplitSequences) {
  // Each split sequence (3 chunks, K = 2) followed by six standalone chunks: the split
  // sequence's backwards wait for all of its forwards, and extra chunks in flight let the stages
  // forward the standalone chunks meanwhile.
  std::vector<data::PlanSequence> sequences;
  for (int i = 0; i < 6; ++i) {
    sequences.push_back({30, {}});
    for (int j = 0; j < 6; ++j) sequences.push_back({10, {}});
  }
  const data::ChunkPlan plan = data::build_chunk_plan(sequences, 10, false);
  std::vector<int32_t> split, standalone, groups;
  for (const int32_t group : all_groups(plan)) {
    (plan.groups()[static_cast<size_t>(group)].split_sequence >= 0 ? split : standalone).push_back(group);
  }
  ASSERT_EQ(split.size(), 6u);
  ASSERT_EQ(standalone.size(), 36u);
  for (size_t i = 0; i < split.size(); ++i) {
    groups.push_back(split[i]);
    groups.insert(groups.end(), standalone.begin() + static_cast<std::ptrdiff_t>(6 * i),
                  standalone.begin() + static_cast<std::ptrdiff_t>(6 * i + 6));
  }
  std::vector<double> bubbles;
  for (const int64_t extra : {0, 2}) {
    bubbles.push_back(simulate_pipeline(pipeline_schedule(plan, groups, 2, 4, extra), unit_cost).bubble_ratio);
  }
  std::printf("split + standalone mix on 4 stages: bubble %.3f with 1F1B's bound, %.3f with 2 extra chunks\n",
              bubbles[0], bubbles[1]);
  EXPECT_LT(bubbles[1], bubbles[0] - 0.02);
}

TEST(PipelineScheduleTest, SimulatorReportsADeadlockedSchedule) {
  PipelineOp forward{Kind::kForward, 0, 0, true, false};
  PipelineOp backward{Kind::kBackward, 0, 0, false, false};
  // Stage 0 waits for chunk 0's gradient from stage 1, which waits for chunk 0's activations.
  const std::vector<std::vector<PipelineOp>> schedule = {{backward, forward}, {forward, backward}};
  chunkflow::testing::expect_error_mentions([&] { simulate_pipeline(schedule, unit_cost); },
                                            {"deadlocks", "stage 0 backward of chunk 0", "stage 1 forward of chunk 0"});
}

TEST(PipelineScheduleTest, ALongSequenceSplitIntoChunksFillsThePipeline) {
  // Uniform chunks multiply the micro-batches: a 64K-token sequence in 2K chunks is 32 micro-
  // batches, and a 4-stage pipeline idles (4-1)/(32+4-1) = 8.6% of the time with K = 32 (all
  // forwards, then all backwards in reverse).
  std::vector<data::PlanSequence> sequences = {{65536, {}}};
  const data::ChunkPlan plan = data::build_chunk_plan(sequences, 2048);
  const auto schedule = pipeline_schedule(plan, all_groups(plan), 32, 4);
  const PipelineSimulation simulation = simulate_pipeline(schedule, unit_cost);
  EXPECT_NEAR(simulation.bubble_ratio, 3.0 / 35.0, 1e-12);
  std::printf("one 64K sequence, 2K chunks, K = 32, 4 stages: simulated bubble %.3f\n", simulation.bubble_ratio);
}

}  // namespace
}  // namespace chunkflow::parallel
