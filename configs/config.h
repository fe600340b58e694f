// The whole run configuration: one struct per YAML section. Leaf code receives its section only;
// the trainer and the tools hold a Config.
#pragma once

#include <string>

#include "configs/checkpoint_config.h"
#include "configs/chunking_config.h"
#include "configs/config_error.h"
#include "configs/data_config.h"
#include "configs/logging_config.h"
#include "configs/model_config.h"
#include "configs/optim_config.h"
#include "configs/parallel_config.h"
#include "configs/run_config.h"

namespace chunkflow::configs {

struct Config {
  RunConfig run;
  ModelConfig model;
  DataConfig data;
  ChunkingConfig chunking;
  ParallelConfig parallel;
  OptimConfig optim;
  CheckpointConfig checkpoint;
  LoggingConfig logging;

  // visit(section_name, section&) for every section, in file order.
  template <typename Visitor>
  void visit_sections(Visitor&& visit) { sections(*this, visit); }
  template <typename Visitor>
  void visit_sections(Visitor&& visit) const { sections(*this, visit); }

  // Validates every section, then the rules that span sections. Throws ConfigError naming the
  // dotted key(s) of the first broken rule.
  void validate() const;

  // checkpoint.dir, or <run.output_dir>/<run.name>/checkpoints when it is "".
  std::string checkpoint_dir() const;

  bool operator==(const Config&) const = default;

 private:
  template <typename Self, typename Visitor>
  static void sections(Self& self, Visitor& visit) {
    visit(RunConfig::kSection, self.run);
    visit(ModelConfig::kSection, self.model);
    visit(DataConfig::kSection, self.data);
    visit(ChunkingConfig::kSection, self.chunking);
    visit(ParallelConfig::kSection, self.parallel);
    visit(OptimConfig::kSection, self.optim);
    visit(CheckpointConfig::kSection, self.checkpoint);
    visit(LoggingConfig::kSection, self.logging);
  }
};

}  // namespace chunkflow::configs
