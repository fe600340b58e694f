// The `logging` section: log level and cadence, TensorBoard, traces and the progress display.
#pragma once

#include <cstdint>
#include <string>

namespace chunkflow::configs {

struct LoggingConfig {
  static constexpr const char* kSection = "logging";

  std::string level = "info";
  int64_t interval = 1;
  bool tensorboard = true;
  bool trace = false;
  std::string progress = "auto";
  int64_t profile_step = 0;

  template <typename Visitor>
  void visit_fields(Visitor&& visit) { fields(*this, visit); }
  template <typename Visitor>
  void visit_fields(Visitor&& visit) const { fields(*this, visit); }

  // Throws ConfigError naming logging.<key> when a rule is broken.
  void validate() const;

  bool operator==(const LoggingConfig&) const = default;

 private:
  template <typename Self, typename Visitor>
  static void fields(Self& self, Visitor& visit) {
    visit("level", self.level, "debug | info | warn | error");
    visit("interval", self.interval, "steps between metric log lines");
    visit("tensorboard", self.tensorboard, "write TensorBoard event files");
    visit("trace", self.trace, "write a Chrome/Perfetto trace of the schedule");
    visit("progress", self.progress, "auto | bar | lines (auto: a bar on a terminal)");
    visit("profile_step", self.profile_step, "step to run under the Kineto profiler (0: none)");
  }
};

}  // namespace chunkflow::configs
