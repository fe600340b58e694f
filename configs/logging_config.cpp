// Rules of the `logging` section; see logging_config.h.
#include "configs/logging_config.h"

#include "configs/config_error.h"

namespace chunkflow::configs {

void LoggingConfig::validate() const {
  check_one_of("logging.level", level, {"debug", "info", "warn", "error"});
  check_field(interval >= 1, "logging.interval", ">= 1", interval);
  check_one_of("logging.progress", progress, {"auto", "bar", "lines"});
  check_field(profile_step >= 0, "logging.profile_step", ">= 0 (0: no profile)", profile_step);
}

}  // namespace chunkflow::configs
