// State-aware 1F1B schedule and its simulator; see pipeline_schedule.h.
#include "parallel/pipeline_schedule.h"

#include <algorithm>
#include <iomanip>
#include <sstream>
#include <map>
#include <utility>

#include "core/error.h"

namespace chunkflow::parallel {

std::vector<std::vector<PipelineOp>> pipeline_schedule(const data::ChunkPlan& plan, std::span<const int32_t> groups,
                                                       int64_t resident_chunks, int stages, int64_t extra_in_flight) {
  CF_ASSERT(stages >= 1 && resident_chunks >= 1 && extra_in_flight >= 0, "stages ", stages, ", resident_chunks ",
            resident_chunks, ", extra_in_flight ", extra_in_flight);
  // The forward order and the backward order, shared by every stage.
  std::vector<PipelineOp> forwards, backwards;
  // needed_forwards[b]: forwards that must have run before backward b can (monotone).
  std::vector<size_t> needed_forwards;
  for (const int32_t group_index : groups) {
    const data::ChunkGroup& group = plan.groups().at(static_cast<size_t>(group_index));
    const int64_t pieces = group.chunk_count;
    const int64_t first_kept = group.split_sequence < 0 ? 0 : std::max<int64_t>(0, pieces - resident_chunks);
    for (int64_t piece = 0; piece < pieces; ++piece) {
      PipelineOp op;
      op.kind = PipelineOp::Kind::kForward;
      op.chunk = group.first_chunk + static_cast<int32_t>(piece);
      op.group = group_index;
      op.keep_activations = piece >= first_kept;
      forwards.push_back(op);
    }
    for (int64_t piece = pieces - 1; piece >= 0; --piece) {
      PipelineOp op;
      op.kind = PipelineOp::Kind::kBackward;
      op.chunk = group.first_chunk + static_cast<int32_t>(piece);
      op.group = group_index;
      op.recompute = piece < first_kept;
      backwards.push_back(op);
      // A split sequence's backwards start after all of its forwards.
      needed_forwards.push_back(forwards.size());
    }
  }

  std::vector<std::vector<PipelineOp>> schedule(static_cast<size_t>(stages));
  for (int stage = 0; stage < stages; ++stage) {
    const size_t in_flight_limit = static_cast<size_t>(stages - stage + extra_in_flight);
    std::vector<PipelineOp>& ops = schedule[static_cast<size_t>(stage)];
    size_t forwarded = 0, backwarded = 0;
    while (backwarded < backwards.size()) {
      const bool backward_ready = needed_forwards[backwarded] <= forwarded;
      const bool forward_allowed = forwarded < forwards.size() && forwarded - backwarded < in_flight_limit;
      if (backward_ready && !forward_allowed) {
        ops.push_back(backwards[backwarded++]);
      } else {
        CF_ASSERT(forwarded < forwards.size(), "pipeline schedule: backward waits for a forward that does not exist");
        ops.push_back(forwards[forwarded++]);
      }
    }
  }
  return schedule;
}

PipelineSimulation simulate_pipeline(const std::vector<std::vector<PipelineOp>>& schedule,
                                     const std::function<double(int, const PipelineOp&)>& op_seconds) {
  const int stages = static_cast<int>(schedule.size());
  PipelineSimulation result;
  result.busy_seconds.assign(static_cast<size_t>(stages), 0.0);
  result.op_times.resize(static_cast<size_t>(stages));
  std::vector<size_t> next(static_cast<size_t>(stages), 0);
  std::vector<double> free_at(static_cast<size_t>(stages), 0.0);
  // Finish time of (stage, kind, chunk).
  std::map<std::tuple<int, PipelineOp::Kind, int32_t>, double> finished;
  size_t remaining = 0;
  for (const auto& ops : schedule) remaining += ops.size();
  while (remaining > 0) {
    bool progressed = false;
    for (int stage = 0; stage < stages; ++stage) {
      const auto& ops = schedule[static_cast<size_t>(stage)];
      size_t& position = next[static_cast<size_t>(stage)];
      // Run this stage's ops for as long as their inputs exist.
      while (position < ops.size()) {
        const PipelineOp& op = ops[position];
        const bool forward = op.kind == PipelineOp::Kind::kForward;
        const int source = forward ? stage - 1 : stage + 1;
        double ready = free_at[static_cast<size_t>(stage)];
        if (source >= 0 && source < stages) {
          const auto input = finished.find({source, op.kind, op.chunk});
          if (input == finished.end()) break;
          ready = std::max(ready, input->second);
        }
        const double seconds = op_seconds(stage, op);
        free_at[static_cast<size_t>(stage)] = ready + seconds;
        result.busy_seconds[static_cast<size_t>(stage)] += seconds;
        finished[{stage, op.kind, op.chunk}] = ready + seconds;
        result.op_times[static_cast<size_t>(stage)].push_back({ready, ready + seconds});
        ++position;
        --remaining;
        progressed = true;
      }
    }
    if (!progressed) {
      std::string waiting;
      for (int stage = 0; stage < stages; ++stage) {
        const size_t position = next[static_cast<size_t>(stage)];
        if (position >= schedule[static_cast<size_t>(stage)].size()) continue;
        const PipelineOp& op = schedule[static_cast<size_t>(stage)][position];
        waiting += " stage " + std::to_string(stage) + (op.kind == PipelineOp::Kind::kForward ? " forward" : " backward") +
                   " of chunk " + std::to_string(op.chunk) + ";";
      }
      CF_FAIL("pipeline schedule deadlocks:", waiting);
    }
  }
  result.step_seconds = *std::max_element(free_at.begin(), free_at.end());
  double busy = 0;
  for (const double seconds : result.busy_seconds) busy += seconds;
  result.bubble_ratio = result.step_seconds > 0 ? 1.0 - busy / (stages * result.step_seconds) : 0.0;
  return result;
}

std::string pipeline_timeline_svg(const std::vector<std::vector<PipelineOp>>& schedule,
                                  const PipelineSimulation& simulation, const std::string& title) {
  CF_ASSERT(simulation.op_times.size() == schedule.size(), "simulation of another schedule");
  constexpr double kWidth = 960, kLeft = 70, kRight = 20, kTop = 40, kRow = 34, kBar = 26;
  const double height = kTop + kRow * static_cast<double>(schedule.size()) + 46;
  const double scale = simulation.step_seconds > 0 ? (kWidth - kLeft - kRight) / simulation.step_seconds : 0.0;
  std::ostringstream svg;
  svg << std::fixed << std::setprecision(1);
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << kWidth << "\" height=\"" << height
      << "\" font-family=\"sans-serif\" font-size=\"11\">\n"
      << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      << "<text x=\"" << kLeft << "\" y=\"22\" font-size=\"14\">" << title << " (bubble "
      << std::setprecision(3) << simulation.bubble_ratio << std::setprecision(1) << ")</text>\n";
  for (size_t stage = 0; stage < schedule.size(); ++stage) {
    const double y = kTop + kRow * static_cast<double>(stage);
    svg << "<text x=\"8\" y=\"" << y + kBar * 0.7 << "\">stage " << stage << "</text>\n";
    for (size_t i = 0; i < schedule[stage].size(); ++i) {
      const PipelineOp& op = schedule[stage][i];
      const auto [start, end] = simulation.op_times[stage][i];
      const bool forward = op.kind == PipelineOp::Kind::kForward;
      const char* color = forward ? "#9ecae1" : (op.recompute ? "#fd8d3c" : "#3182bd");
      const double x = kLeft + start * scale, width = std::max(0.5, (end - start) * scale);
      svg << "<rect x=\"" << x << "\" y=\"" << y << "\" width=\"" << width << "\" height=\"" << kBar
          << "\" fill=\"" << color << "\" stroke=\"white\" stroke-width=\"0.5\"><title>"
          << (forward ? "forward" : op.recompute ? "recompute + backward" : "backward") << " of chunk " << op.chunk
          << " (group " << op.group << ")</title></rect>\n";
      if (width > 16) {
        svg << "<text x=\"" << x + width / 2 << "\" y=\"" << y + kBar * 0.65 << "\" text-anchor=\"middle\" fill=\""
            << (forward ? "black" : "white") << "\">" << op.chunk << "</text>\n";
      }
    }
  }
  const double legend_y = kTop + kRow * static_cast<double>(schedule.size()) + 18;
  const std::vector<std::pair<const char*, const char*>> legend = {
      {"#9ecae1", "forward"}, {"#3182bd", "backward"}, {"#fd8d3c", "recompute + backward"}};
  double legend_x = kLeft;
  for (const auto& [color, label] : legend) {
    svg << "<rect x=\"" << legend_x << "\" y=\"" << legend_y - 10 << "\" width=\"12\" height=\"12\" fill=\"" << color
        << "\"/><text x=\"" << legend_x + 16 << "\" y=\"" << legend_y << "\">" << label << "</text>\n";
    legend_x += 170;
  }
  svg << "<text x=\"" << kWidth - kRight << "\" y=\"" << legend_y << "\" text-anchor=\"end\">time -&gt; (chunk numbers in the bars)</text>\n";
  svg << "</svg>\n";
  return svg.str();
}

}  // namespace chunkflow::parallel
