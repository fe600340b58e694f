// Progress bar / periodic log lines; see progress.h.
#include "core/progress.h"

#include <unistd.h>

#include <cstdio>

#include "core/logging.h"
#include "core/strings.h"

namespace chunkflow::core {
namespace {
constexpr double kTerminalRedrawSeconds = 0.2;
constexpr double kLogLineSeconds = 15.0;
constexpr int kBarWidth = 28;
}  // namespace

Progress::Progress(std::string label, int64_t total, std::string unit)
    : label_(std::move(label)),
      total_(total),
      unit_(std::move(unit)),
      terminal_(::isatty(STDERR_FILENO) == 1),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

Progress::~Progress() {
  // A bar left mid-line would glue the next log line onto it.
  if (terminal_ && !finished_ && done_ > 0) std::fputc('\n', stderr);
}

double Progress::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

std::string Progress::status_text() const {
  const double elapsed = elapsed_seconds();
  const double rate = elapsed > 0 ? static_cast<double>(done_) / elapsed : 0.0;
  std::string text = format_count(static_cast<double>(done_));
  if (total_ > 0) text += "/" + format_count(static_cast<double>(total_));
  text += " " + unit_;
  if (total_ > 0) {
    text += " " + format_fixed(100.0 * static_cast<double>(done_) / static_cast<double>(total_), 1) + "%";
  }
  text += " " + format_count(rate) + " " + unit_ + "/s";
  if (total_ > 0 && rate > 0 && done_ < total_) {
    text += " ETA " + format_duration(static_cast<double>(total_ - done_) / rate);
  }
  return text;
}

void Progress::update(int64_t done) {
  done_ = done;
  const auto now = std::chrono::steady_clock::now();
  const double since_draw = std::chrono::duration<double>(now - last_draw_).count();
  if (since_draw < (terminal_ ? kTerminalRedrawSeconds : kLogLineSeconds)) return;
  last_draw_ = now;
  draw(false);
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (total_ > 0 && done_ < total_ && done_ == 0) done_ = total_;
  draw(true);
}

void Progress::draw(bool final_line) {
  if (!terminal_) {
    if (final_line) {
      log_info(label_, ": done, ", format_count(static_cast<double>(done_)), " ", unit_, " in ",
               format_duration(elapsed_seconds()));
    } else {
      log_info(label_, ": ", status_text());
    }
    return;
  }
  std::string bar;
  if (total_ > 0) {
    const int filled = static_cast<int>(kBarWidth * static_cast<double>(done_) / static_cast<double>(total_));
    bar = "[" + std::string(static_cast<size_t>(std::min(filled, kBarWidth)), '#') +
          std::string(static_cast<size_t>(kBarWidth - std::min(filled, kBarWidth)), '.') + "] ";
  }
  const std::string suffix = final_line ? " in " + format_duration(elapsed_seconds()) + "\n" : "";
  std::fprintf(stderr, "\r\033[2K%s %s%s%s", label_.c_str(), bar.c_str(), status_text().c_str(),
               suffix.c_str());
  std::fflush(stderr);
}

}  // namespace chunkflow::core
