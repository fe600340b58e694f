// The `run` section: what this run is called, where it writes, how long it trains, on what device.
#pragma once

#include <cstdint>
#include <string>

namespace chunkflow::configs {

struct RunConfig {
  static constexpr const char* kSection = "run";

  std::string name = "chunkflow";
  std::string output_dir = "runs";
  int64_t seed = 1234;
  int64_t steps = 100;
  std::string device = "auto";
  double peak_tflops = 989.0;
  bool overwrite = false;

  // visit(name, field&, meaning) for every key, in file order; shared by the loader, the YAML
  // dump and the docs check.
  template <typename Visitor>
  void visit_fields(Visitor&& visit) { fields(*this, visit); }
  template <typename Visitor>
  void visit_fields(Visitor&& visit) const { fields(*this, visit); }

  // Throws ConfigError naming run.<key> when a rule is broken.
  void validate() const;

  // <output_dir>/<name>: where this run's logs, traces and resolved config go.
  std::string run_dir() const { return output_dir + "/" + name; }

  bool operator==(const RunConfig&) const = default;

 private:
  template <typename Self, typename Visitor>
  static void fields(Self& self, Visitor& visit) {
    visit("name", self.name, "run name; outputs go to <output_dir>/<name>");
    visit("output_dir", self.output_dir, "parent folder of all runs");
    visit("seed", self.seed, "seed for sampling order and random init");
    visit("steps", self.steps, "optimizer steps to train");
    visit("device", self.device, "auto | cpu | cuda (auto: a GPU when this build has CUDA kernels and one is visible)");
    visit("peak_tflops", self.peak_tflops,
          "one GPU's peak TFLOP/s, the denominator of the MFU metric (989: H100/H200 SXM dense bf16)");
    visit("overwrite", self.overwrite,
          "a fresh start into a folder that holds an earlier run deletes its outputs (false: refused)");
  }
};

}  // namespace chunkflow::configs
