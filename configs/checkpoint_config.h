// The `checkpoint` section: where checkpoints go, how often, how many are kept, what to resume.
#pragma once

#include <cstdint>
#include <string>

namespace chunkflow::configs {

struct CheckpointConfig {
  static constexpr const char* kSection = "checkpoint";

  std::string dir;        // "": <run.output_dir>/<run.name>/checkpoints (Config::checkpoint_dir)
  int64_t interval = 500;  // steps between checkpoints; 0: only at the end; -1: never
  int64_t keep_last = 3;
  std::string resume;     // "": start fresh; "auto": latest in dir if any; else a checkpoint path

  template <typename Visitor>
  void visit_fields(Visitor&& visit) { fields(*this, visit); }
  template <typename Visitor>
  void visit_fields(Visitor&& visit) const { fields(*this, visit); }

  // Throws ConfigError naming checkpoint.<key> when a rule is broken.
  void validate() const;

  bool operator==(const CheckpointConfig&) const = default;

 private:
  template <typename Self, typename Visitor>
  static void fields(Self& self, Visitor& visit) {
    visit("dir", self.dir, "checkpoint folder; \"\" = <run.output_dir>/<run.name>/checkpoints");
    visit("interval", self.interval, "steps between checkpoints; 0 = only at the end, -1 = never");
    visit("keep_last", self.keep_last, "checkpoints kept; older ones are deleted");
    visit("resume", self.resume, "\"\" = fresh start | \"auto\" = latest in dir | a checkpoint path");
  }
};

}  // namespace chunkflow::configs
