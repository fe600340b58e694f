// Rules of the `run` section; see run_config.h.
#include "configs/run_config.h"

#include "configs/config_error.h"

namespace chunkflow::configs {

void RunConfig::validate() const {
  check_field(!name.empty() && name.find('/') == std::string::npos, "run.name",
              "a non-empty folder name without '/'", name,
              "it names the folder <run.output_dir>/<run.name>");
  check_field(!output_dir.empty(), "run.output_dir", "non-empty", output_dir,
              "use \".\" for the current folder");
  check_field(steps >= 1, "run.steps", ">= 1", steps);
  check_one_of("run.device", device, {"auto", "cpu", "cuda"});
  check_field(peak_tflops > 0 && peak_tflops < 1e7, "run.peak_tflops", "in (0, 1e7)", peak_tflops,
              "the GPU's peak TFLOP/s in the run's precision, e.g. 989 for an H100/H200 in bf16");
}

}  // namespace chunkflow::configs
