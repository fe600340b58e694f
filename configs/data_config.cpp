// Rules of the `data` section; see data_config.h.
#include "configs/data_config.h"

#include <filesystem>

#include "configs/config_error.h"
#include "core/error.h"

namespace chunkflow::configs {

std::string DataConfig::resolved_loss_mask() const {
  if (loss_mask_path == "none") return "";
  if (!loss_mask_path.empty()) return loss_mask_path;
  const std::string beside = path + "_loss_mask";
  return std::filesystem::exists(beside + ".idx") ? beside : "";
}

void DataConfig::validate() const {
  check_field(!path.empty(), "data.path", "the prefix of an indexed dataset", path,
              "point it at <prefix> of <prefix>.idx / <prefix>.bin (chunkflow-data prepare "
              "writes them)");
  check_field(batch_sequences >= 0, "data.batch_sequences", ">= 0", batch_sequences);
  check_field(batch_tokens >= 0, "data.batch_tokens", ">= 0", batch_tokens);
  if ((batch_sequences > 0) == (batch_tokens > 0)) {
    throw ConfigError(
        std::vector<std::string>{"data.batch_sequences", "data.batch_tokens"},
        core::str_cat("exactly one of data.batch_sequences and data.batch_tokens must be > 0, "
                      "got data.batch_sequences = ", batch_sequences,
                      " and data.batch_tokens = ", batch_tokens,
                      "; size the global batch by sequences or by tokens and set the other to 0"));
  }
}

}  // namespace chunkflow::configs
