// Chrome-trace JSON writer; see trace.h.
#include "trainer/trace.h"

#include <cstdio>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/file_io.h"
#include "core/strings.h"

namespace chunkflow::trainer {
namespace {

// JSON string body for names we generate (ASCII); quotes and backslashes escaped anyway.
std::string escaped(const std::string& text) {
  std::string out;
  for (const char c : text) {
    if (c == '"' || c == '\\') out.push_back('\\');
    if (static_cast<unsigned char>(c) >= 0x20) out.push_back(c);
  }
  return out;
}

int64_t microseconds(TraceRecorder::Clock::duration duration) {
  return std::chrono::duration_cast<std::chrono::microseconds>(duration).count();
}

}  // namespace

TraceRecorder::TraceRecorder(int rank, Clock::time_point origin) : rank_(rank), origin_(origin) {}

void TraceRecorder::add(const std::string& name, const char* category, Lane lane, Clock::time_point start,
                        Clock::time_point end, const std::string& args_json) {
  if (events_.size() >= max_events()) {
    ++dropped_;
    return;
  }
  events_.push_back({name, category, lane, microseconds(start - origin_), microseconds(end - start), args_json});
}

void TraceRecorder::write(const std::string& path) const {
  std::vector<std::string> entries;
  entries.push_back(core::str_cat("{\"ph\": \"M\", \"name\": \"process_name\", \"pid\": ", rank_,
                                  ", \"args\": {\"name\": \"rank ", rank_, "\"}}"));
  entries.push_back(core::str_cat("{\"ph\": \"M\", \"name\": \"process_sort_index\", \"pid\": ", rank_,
                                  ", \"args\": {\"sort_index\": ", rank_, "}}"));
  const char* lanes[] = {"compute", "wait", "step"};
  for (int lane = 0; lane < 3; ++lane) {
    entries.push_back(core::str_cat("{\"ph\": \"M\", \"name\": \"thread_name\", \"pid\": ", rank_, ", \"tid\": ",
                                    lane, ", \"args\": {\"name\": \"", lanes[lane], "\"}}"));
  }
  for (const Event& event : events_) {
    entries.push_back(core::str_cat("{\"ph\": \"X\", \"name\": \"", escaped(event.name), "\", \"cat\": \"",
                                    event.category, "\", \"pid\": ", rank_, ", \"tid\": ", static_cast<int>(event.lane),
                                    ", \"ts\": ", event.start_us, ", \"dur\": ", event.duration_us, ", \"args\": {",
                                    event.args, "}}"));
  }
  core::write_file_atomic(path, "{\"displayTimeUnit\": \"ms\", \"traceEvents\": [\n" + core::join(entries, ",\n") +
                                    "\n]}\n");
}

}  // namespace chunkflow::trainer
