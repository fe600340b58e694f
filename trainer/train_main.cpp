// chunkflow-train --config run.yaml [--set section.key=value ...]
#include <string>
#include <vector>

#include "configs/config_loader.h"
#include "core/command_line.h"
#include "core/error.h"
#include "core/logging.h"
#include "trainer/trainer.h"

int main(int argc, char** argv) {
  using namespace chunkflow;
  std::string config_path;
  std::vector<std::string> overrides;
  core::CommandLine command_line("chunkflow-train",
                                 "Trains a LLaMA/Qwen2-family model on chunks with the state-aware scheduler.");
  command_line.add_string("config", &config_path, "YAML run config (see configs/README.md)", true);
  command_line.add_repeated("set", &overrides, "override one key: --set chunking.chunk_size=1024");
  try {
    if (!command_line.parse(std::vector<std::string>(argv + 1, argv + argc))) return 0;
    trainer::Trainer trainer(configs::load_config(config_path, overrides));
    trainer.train();
    return 0;
  } catch (const core::Error& error) {
    core::log_error(error.what());
    return 1;
  } catch (const std::exception& error) {
    core::log_error("chunkflow-train: unexpected failure: ", error.what());
    return 1;
  }
}
