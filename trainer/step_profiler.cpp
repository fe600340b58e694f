// Kineto around one step; see step_profiler.h.
#include "trainer/step_profiler.h"

#include <torch/csrc/autograd/profiler_kineto.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <utility>

#include "core/error.h"
#include "core/strings.h"
#include "trainer/device_setup.h"

namespace chunkflow::trainer {
namespace {

namespace profiler = torch::autograd::profiler;
namespace impl = torch::profiler::impl;

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::vector<ProfiledActivity> by_total_time(const std::map<std::string, ProfiledActivity>& totals) {
  std::vector<ProfiledActivity> sorted;
  sorted.reserve(totals.size());
  for (const auto& [name, activity] : totals) sorted.push_back(activity);
  std::sort(sorted.begin(), sorted.end(),
            [](const ProfiledActivity& a, const ProfiledActivity& b) { return a.seconds > b.seconds; });
  return sorted;
}

// Seconds covered by at least one of the intervals (kernels on several streams overlap).
double union_seconds(std::vector<std::pair<uint64_t, uint64_t>> intervals) {
  std::sort(intervals.begin(), intervals.end());
  uint64_t covered = 0, end = 0;
  for (const auto& [first, last] : intervals) {
    if (last <= end) continue;
    covered += last - std::max(first, end);
    end = last;
  }
  return static_cast<double>(covered) * 1e-9;
}

// Kernel and autograd node names are long C++ signatures: the table drops the namespaces that
// carry no information and keeps the head; the trace keeps everything.
std::string short_name(std::string name) {
  for (const char* noise : {"(anonymous namespace)::", "torch::autograd::", "chunkflow::"}) {
    for (size_t at = name.find(noise); at != std::string::npos; at = name.find(noise, at)) {
      name.erase(at, std::char_traits<char>::length(noise));
    }
  }
  constexpr size_t kWidth = 80;
  // resize + append rather than substr() + "...": GCC 12 reports a false -Warray-bounds on the
  // latter when the torch headers come from the precompiled header.
  if (name.size() > kWidth) name.resize(kWidth - 3), name.append("...");
  return name;
}

void append_table(std::ostringstream& out, const char* title, const std::vector<ProfiledActivity>& rows, size_t top,
                  double wall_seconds) {
  out << title << "\n" << "   share    total ms    calls  name\n";
  for (size_t index = 0; index < rows.size() && index < top; ++index) {
    const ProfiledActivity& row = rows[index];
    const double share = wall_seconds > 0 ? 100.0 * row.seconds / wall_seconds : 0.0;
    char numbers[64];
    std::snprintf(numbers, sizeof numbers, "%7.1f%%  %10.2f  %7lld  ", share, row.seconds * 1e3,
                  static_cast<long long>(row.calls));
    out << numbers << short_name(row.name) << "\n";
  }
}

}  // namespace

std::string StepProfile::summary(size_t top) const {
  std::ostringstream out;
  out << "wall " << core::format_fixed(wall_seconds * 1e3, 1) << " ms";
  if (!device_activities.empty()) {
    out << "; GPU busy " << core::format_fixed(device_busy_seconds * 1e3, 1) << " ms ("
        << core::format_fixed(wall_seconds > 0 ? 100.0 * device_busy_seconds / wall_seconds : 0.0, 1)
        << "% of the wall time; the rest the GPU waited on the host)";
  }
  out << "\n";
  if (!device_activities.empty()) append_table(out, "GPU kernels and copies (GPU timestamps):", device_activities, top, wall_seconds);
  append_table(out, "CPU operators (inclusive of the operators they call):", cpu_operators, top, wall_seconds);
  return out.str();
}

StepProfiler::StepProfiler(torch::Device device) : device_(device) {}

StepProfiler::~StepProfiler() {
  if (running_) profiler::disableProfiler();  // an exception ended the step: leave no profiler on
}

void StepProfiler::start() {
  CF_CHECK(!running_, "StepProfiler::start: already profiling");
  std::set<impl::ActivityType> activities{impl::ActivityType::CPU};
  if (device_.is_cuda()) activities.insert(impl::ActivityType::CUDA);
  const impl::ProfilerConfig config(impl::ProfilerState::KINETO);
  profiler::prepareProfiler(config, activities);
  synchronize_device(device_);  // the previous step's kernels are not this step's
  profiler::enableProfiler(config, activities);
  running_ = true;
  started_ = now_seconds();
}

StepProfile StepProfiler::stop(const std::string& trace_path) {
  CF_CHECK(running_, "StepProfiler::stop: not profiling");
  synchronize_device(device_);  // every kernel of the step has finished and been recorded
  StepProfile profile;
  profile.wall_seconds = now_seconds() - started_;
  running_ = false;
  std::unique_ptr<profiler::ProfilerResult> result = profiler::disableProfiler();
  CF_CHECK(result != nullptr, "the profiler returned no result");

  std::map<std::string, ProfiledActivity> device_totals, cpu_totals;
  std::vector<std::pair<uint64_t, uint64_t>> device_intervals;
  for (const profiler::KinetoEvent& event : result->events()) {
    const bool on_device = event.deviceType() == c10::DeviceType::CUDA;
    auto& totals = on_device ? device_totals : cpu_totals;
    ProfiledActivity& activity = totals[event.name()];
    activity.name = event.name();
    activity.calls += 1;
    activity.seconds += static_cast<double>(event.durationNs()) * 1e-9;
    if (on_device) device_intervals.emplace_back(event.startNs(), event.endNs());
  }
  profile.device_busy_seconds = union_seconds(std::move(device_intervals));
  profile.device_activities = by_total_time(device_totals);
  profile.cpu_operators = by_total_time(cpu_totals);
  result->save(trace_path);
  return profile;
}

}  // namespace chunkflow::trainer
