// Rules of the `checkpoint` section; see checkpoint_config.h.
#include "configs/checkpoint_config.h"

#include "configs/config_error.h"

namespace chunkflow::configs {

void CheckpointConfig::validate() const {
  check_field(interval >= 0, "checkpoint.interval", ">= 0 (0 = only at the end)", interval);
  check_field(keep_last >= 1, "checkpoint.keep_last", ">= 1", keep_last,
              "the last checkpoint is what resume and export read");
}

}  // namespace chunkflow::configs
