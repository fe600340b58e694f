// Progress reporting for long work: a redrawn bar with rate and ETA when stderr is a terminal,
// plain log lines at a steady interval otherwise (CI logs, SLURM output files).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace chunkflow::core {

class Progress {
 public:
  // `total` <= 0 means unknown (no percentage or ETA, only counts and rate). `unit` names what is
  // counted ("lines", "sequences", "steps").
  Progress(std::string label, int64_t total, std::string unit);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // Sets the amount done so far; cheap enough to call per item (redraws are rate-limited).
  void update(int64_t done);
  // Prints the final line: total, elapsed time, average rate.
  void finish();

  // The status text without decoration, e.g. "1.20M/3.00M lines 40.0% 2.10M lines/s ETA 1m05s".
  std::string status_text() const;

 private:
  void draw(bool final_line);
  double elapsed_seconds() const;

  std::string label_;
  int64_t total_;
  std::string unit_;
  int64_t done_ = 0;
  bool terminal_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace chunkflow::core
