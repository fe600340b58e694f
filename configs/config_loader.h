// YAML <-> Config: the loader with strict typing, source locations and --set overrides, and the
// dump of the resolved config that is printed and saved with every run. yaml-cpp stays inside
// config_loader.cpp.
#pragma once

#include <string>
#include <vector>

#include "configs/config.h"

namespace chunkflow::configs {

// Reads the YAML file at `path`, applies `overrides` ("section.key=value", as given to --set, in
// order; a later one wins) and validates. Every mistake throws ConfigError with the source:
//   unknown key chunking.chunk_sze in run.yaml:12; did you mean 'chunk_size'?
//   chunking.chunk_size must be an integer, got 1.5 (run.yaml:12)
//   chunking.chunk_size must be > 0, got 0 (--set chunking.chunk_size=0)
// Sections and keys the file leaves out keep their defaults; a file of only comments is an
// all-default config (which still needs data.path). A missing file throws naming the path.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});

// load_config on text already in memory; `source_name` stands for the file in messages.
Config parse_config(const std::string& yaml_text, const std::string& source_name,
                    const std::vector<std::string>& overrides = {});

// The resolved config as YAML: every section and every key with its value (defaults included),
// each commented with its meaning. parse_config(to_yaml(c), ...) == c.
std::string to_yaml(const Config& config);

// Every dotted key, in file order: "run.name", ..., "logging.progress".
std::vector<std::string> all_keys();

// Writes to_yaml(config) to `path` atomically (core::write_file_atomic).
void write_resolved_config(const Config& config, const std::string& path);

}  // namespace chunkflow::configs
