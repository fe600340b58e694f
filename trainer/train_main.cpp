// chunkflow-train --config run.yaml [--set section.key=value ...]
#include <string>
#include <vector>

#include "configs/config_loader.h"
#include "core/command_line.h"
#include "core/error.h"
#include "core/logging.h"
#include "parallel/mpi_communicator.h"
#include "trainer/trainer.h"

int main(int argc, char** argv) {
  using namespace chunkflow;
  std::string config_path;
  std::vector<std::string> overrides;
  core::CommandLine command_line("chunkflow-train",
                                 "Trains a LLaMA/Qwen2-family model on chunks with the state-aware scheduler.");
  command_line.add_string("config", &config_path, "YAML run config (see configs/README.md)", true);
  command_line.add_repeated("set", &overrides, "override one key: --set chunking.chunk_size=1024");
  std::unique_ptr<parallel::Communicator> world;
  // A failing rank aborts the whole job so that no other rank waits forever in a collective.
  const auto fail = [&](const std::string& message) {
    core::log_error(message);
    if (world && world->size() > 1) world->abort(1);
    return 1;
  };
  try {
    world = parallel::mpi_world(&argc, &argv);
    if (world->size() > 1) core::set_log_rank(world->rank());
    if (!command_line.parse(std::vector<std::string>(argv + 1, argv + argc))) return 0;
    trainer::Trainer trainer(configs::load_config(config_path, overrides), world.get());
    trainer.train();
    return 0;
  } catch (const core::Error& error) {
    return fail(error.what());
  } catch (const std::exception& error) {
    return fail(std::string("chunkflow-train: unexpected failure: ") + error.what());
  }
}
