// chunkflow-pipeline --config run.yaml [--set key=value ...] [--batches N] [--svg timeline.svg]
//
// Predicts, before a run, how the run config's global batches flow through its pipeline: plans
// the first N batches as chunkflow-train would (same sampler, chunking and DP balancing by the
// FLOP cost model), runs the state-aware 1F1B schedule of every DP rank through the simulator and
// prints chunks, split sequences, DP imbalance and the pipeline bubble per batch; --svg draws the
// first batch's schedule on DP rank 0 as a Gantt chart.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "configs/config_loader.h"
#include "core/command_line.h"
#include "core/error.h"
#include "core/file_io.h"
#include "core/logging.h"
#include "data/chunk_plan.h"
#include "data/indexed_dataset.h"
#include "data/sampler.h"
#include "models/transformer.h"
#include "parallel/data_parallel.h"
#include "parallel/pipeline_schedule.h"
#include "trainer/flops.h"
#include "trainer/trainer.h"

int main(int argc, char** argv) {
  using namespace chunkflow;
  try {
    std::string config_path, svg_path;
    std::vector<std::string> overrides;
    int64_t batches = 8;
    core::CommandLine command_line("chunkflow-pipeline",
                                   "Simulates a run config's pipeline schedule (state-aware 1F1B over chunks) on its "
                                   "first global batches: chunks, DP imbalance and bubble ratio per batch, and an "
                                   "SVG timeline.");
    command_line.add_string("config", &config_path, "YAML run config (see configs/README.md)", true);
    command_line.add_repeated("set", &overrides, "override one key: --set parallel.pp=4");
    command_line.add_int("batches", &batches, "global batches to plan and simulate (default 8)");
    command_line.add_string("svg", &svg_path, "write the first batch's schedule (DP rank 0) as an SVG timeline");
    if (!command_line.parse(std::vector<std::string>(argv + 1, argv + argc))) return 0;
    CF_CHECK(batches >= 1, "chunkflow-pipeline --batches must be >= 1, got ", batches);
    const configs::Config config = configs::load_config(config_path, overrides);
    const configs::ParallelConfig& parallel = config.parallel;
    const int stages = static_cast<int>(parallel.pp), dp = static_cast<int>(parallel.dp);
    models::pipeline_stage(config.model, 0, stages);  // checks layers >= stages, naming both keys

    const data::IndexedDataset dataset(config.data.path);
    data::GlobalBatchSampler sampler(dataset.lengths(), config.data, static_cast<uint64_t>(config.run.seed));
    const parallel::GroupCostModel cost_model = trainer::flop_cost_model(config.model);
    std::printf("%s: dp %d x pp %d (cp %lld splits every chunk evenly and does not change the schedule), "
                "chunk_size %lld, resident_chunks %lld\n",
                config_path.c_str(), dp, stages, static_cast<long long>(parallel.cp),
                static_cast<long long>(config.chunking.chunk_size), static_cast<long long>(config.chunking.resident_chunks));
    std::printf("%6s %10s %8s %7s %8s %13s %8s\n", "batch", "sequences", "tokens", "chunks", "split", "dp imbalance",
                "bubble");
    double bubble_sum = 0;
    for (int64_t b = 0; b < batches; ++b) {
      const data::GlobalBatch batch = sampler.next();
      std::vector<data::PlanSequence> sequences;
      int64_t tokens = 0;
      for (const int64_t index : batch.sequences) {
        sequences.push_back({dataset.length(index), {}});
        tokens += dataset.length(index);
      }
      const data::ChunkPlan plan = trainer::build_step_plan(config.chunking, sequences);
      const parallel::DpAssignment assignment = parallel::balance_chunk_groups(plan, dp, cost_model);
      // The step ends when the slowest DP rank's pipeline does; its bubble is the one reported.
      double slowest = -1, bubble = 0;
      for (int rank = 0; rank < dp; ++rank) {
        const auto schedule = parallel::pipeline_schedule(plan, assignment.groups_of_rank[static_cast<size_t>(rank)],
                                                          config.chunking.resident_chunks, stages,
                                                          config.parallel.pipeline_extra_in_flight);
        const parallel::PipelineSimulation simulation =
            parallel::simulate_pipeline(schedule, trainer::pipeline_op_cost(config.model, cost_model, plan, stages));
        if (simulation.step_seconds > slowest) {
          slowest = simulation.step_seconds;
          bubble = simulation.bubble_ratio;
        }
        if (b == 0 && rank == 0 && !svg_path.empty()) {
          const auto parent = std::filesystem::path(svg_path).parent_path();
          if (!parent.empty()) core::make_directories(parent.string());
          core::write_file_atomic(
              svg_path, parallel::pipeline_timeline_svg(
                            schedule, simulation,
                            core::str_cat("Pipeline of ", stages, " stages, first global batch, DP rank 0: ",
                                          plan.chunks().size(), " chunks, resident_chunks ",
                                          config.chunking.resident_chunks)));
        }
      }
      bubble_sum += bubble;
      std::printf("%6lld %10zu %8lld %7zu %8lld %13.3f %8.3f\n", static_cast<long long>(b + 1), batch.sequences.size(),
                  static_cast<long long>(tokens), plan.chunks().size(), static_cast<long long>(plan.split_sequences()),
                  assignment.imbalance(), bubble);
    }
    std::printf("mean bubble %.3f over %lld batches (FLOP cost model; backward = 2 forwards, recompute + backward = "
                "3; communication free)\n",
                bubble_sum / static_cast<double>(batches), static_cast<long long>(batches));
    if (!svg_path.empty()) std::printf("wrote %s\n", svg_path.c_str());
    return 0;
  } catch (const core::Error& error) {
    core::log_error(error.what());
    return 1;
  }
}
