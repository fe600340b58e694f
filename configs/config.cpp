// Config::validate: every section's rules, then the rules that span sections; see config.h.
#include "configs/config.h"

#include <vector>

#include "core/error.h"

namespace chunkflow::configs {

void Config::validate() const {
  visit_sections([](const char*, const auto& section) { section.validate(); });

  // Pipeline stages own contiguous layers; an empty stage would have nothing to run.
  if (parallel.pp > model.num_hidden_layers) {
    throw ConfigError(std::vector<std::string>{"parallel.pp", "model.num_hidden_layers"},
                      core::str_cat("parallel.pp must be <= model.num_hidden_layers (",
                                    model.num_hidden_layers, "), got ", parallel.pp,
                                    "; every pipeline stage needs at least one layer"));
  }
  // Tensor parallelism splits every layer's heads and MLP and the vocabulary over tp ranks. (A model
  // read from model.init_from is checked when it is built, models::check_tensor_parallel.)
  if (parallel.tp > 1 && model.init_from.empty()) {
    for (const auto& [key, value] : model.tensor_parallel_split_sizes()) {
      if (value % parallel.tp == 0) continue;
      throw ConfigError(std::vector<std::string>{"parallel.tp", key},
                        core::str_cat("parallel.tp = ", parallel.tp, " splits every layer's heads, MLP and the "
                                      "vocabulary over ", parallel.tp, " ranks, but ", key, " = ", value,
                                      " is not a multiple of ", parallel.tp));
    }
  }
  // Padding tokens would need their own place in the context-parallel split of a chunk.
  if (chunking.strategy == "pad_to_longest" && parallel.cp > 1) {
    throw ConfigError(std::vector<std::string>{"chunking.strategy", "parallel.cp"},
                      core::str_cat("chunking.strategy pad_to_longest needs parallel.cp = 1, got ", parallel.cp,
                                    "; the padded baseline runs with dp and pp only"));
  }
  // NCCL moves CUDA tensors only.
  if (parallel.backend == "nccl" && run.device == "cpu") {
    throw ConfigError(std::vector<std::string>{"parallel.backend", "run.device"},
                      "parallel.backend must be mpi or auto when run.device is \"cpu\", got "
                      "\"nccl\"; NCCL moves CUDA tensors only");
  }
}

std::string Config::checkpoint_dir() const {
  return checkpoint.dir.empty() ? run.run_dir() + "/checkpoints" : checkpoint.dir;
}

}  // namespace chunkflow::configs
