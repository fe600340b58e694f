// A Chrome-trace / Perfetto JSON timeline of one rank (logging.trace): what the rank did when,
// on three lanes — compute (forward, backward, recompute + backward of each chunk), wait (blocked
// on a pipeline peer's activations or gradients) and step (planning, gradient all-reduce,
// optimizer, checkpoint). Gaps on the compute lane are the pipeline bubbles. Open the files of a
// run (<run dir>/trace/rank-N.json) in https://ui.perfetto.dev or chrome://tracing; each rank is
// a process there, so all ranks of a run line up on one time axis (the ranks' clocks are the
// machine's monotonic clock; across machines they are aligned only to the start of training).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace chunkflow::trainer {

class TraceRecorder {
 public:
  using Clock = std::chrono::steady_clock;
  enum Lane : int { kCompute = 0, kWait = 1, kStep = 2 };

  // `origin`: time zero of the timeline (the same on every rank of a machine: the start of
  // training, taken after a barrier).
  TraceRecorder(int rank, Clock::time_point origin);

  // One finished span. `category` is Perfetto's "cat" (forward, backward, recompute, wait,
  // communication, optimizer, ...); `args_json` a JSON object's members without braces
  // ("\"chunk\": 3, \"tokens\": 24") or "". Spans past max_events() are counted, not kept.
  void add(const std::string& name, const char* category, Lane lane, Clock::time_point start,
           Clock::time_point end, const std::string& args_json = "");

  // {"traceEvents": [...]} with process and lane names, written atomically.
  void write(const std::string& path) const;

  size_t events() const { return events_.size(); }
  int64_t dropped() const { return dropped_; }
  static constexpr size_t max_events() { return 2'000'000; }

 private:
  struct Event {
    std::string name;
    const char* category;
    Lane lane;
    int64_t start_us, duration_us;
    std::string args;
  };
  int rank_;
  Clock::time_point origin_;
  std::vector<Event> events_;
  int64_t dropped_ = 0;
};

// Records [construction, destruction) as one span when `recorder` is not null.
class TraceSpan {
 public:
  TraceSpan(TraceRecorder* recorder, std::string name, const char* category, TraceRecorder::Lane lane,
            std::string args_json = "")
      : recorder_(recorder), name_(std::move(name)), category_(category), lane_(lane), args_(std::move(args_json)),
        start_(recorder != nullptr ? TraceRecorder::Clock::now() : TraceRecorder::Clock::time_point{}) {}
  ~TraceSpan() {
    if (recorder_ != nullptr) recorder_->add(name_, category_, lane_, start_, TraceRecorder::Clock::now(), args_);
  }
  TraceSpan(const TraceSpan&) = delete;
  TraceSpan& operator=(const TraceSpan&) = delete;

 private:
  TraceRecorder* recorder_;
  std::string name_;
  const char* category_;
  TraceRecorder::Lane lane_;
  std::string args_;
  TraceRecorder::Clock::time_point start_;
};

}  // namespace chunkflow::trainer
