// Rules of the `checkpoint` section; see checkpoint_config.h.
#include "configs/checkpoint_config.h"

#include "configs/config_error.h"

namespace chunkflow::configs {

void CheckpointConfig::validate() const {
  check_field(interval >= -1, "checkpoint.interval", ">= -1 (0 = only at the end, -1 = never)", interval);
  check_field(keep_last >= 1, "checkpoint.keep_last", ">= 1", keep_last,
              "the last checkpoint is what resume and export read");
}

}  // namespace chunkflow::configs
