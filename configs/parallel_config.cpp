// Rules of the `parallel` section and the world-size check; see parallel_config.h.
#include "configs/parallel_config.h"

#include <algorithm>

#include "configs/config_error.h"
#include "core/error.h"
#include "core/strings.h"

namespace chunkflow::configs {
namespace {

const std::vector<std::string> kAxes = {"dp", "cp", "pp", "tp"};

std::string trim(const std::string& text) {
  const auto first = text.find_first_not_of(" \t");
  if (first == std::string::npos) return "";
  const auto last = text.find_last_not_of(" \t");
  return text.substr(first, last - first + 1);
}

}  // namespace

std::vector<std::string> ParallelConfig::axis_order() const {
  std::vector<std::string> axes;
  size_t start = 0;
  while (true) {
    const size_t comma = order.find(',', start);
    axes.push_back(trim(order.substr(start, comma == std::string::npos ? std::string::npos
                                                                          : comma - start)));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  const std::string rule = "a comma-separated permutation of dp,cp,pp (and tp, innermost when left out)";
  for (const auto& axis : axes) {
    if (std::find(kAxes.begin(), kAxes.end(), axis) == kAxes.end()) {
      throw ConfigError("parallel.order",
                        "parallel.order must be " + rule + ", got " + format_value(order) +
                            ": unknown axis " + format_value(axis) + core::did_you_mean(axis, kAxes));
    }
    if (std::count(axes.begin(), axes.end(), axis) > 1) {
      throw ConfigError("parallel.order", "parallel.order must be " + rule + ", got " +
                                              format_value(order) + ": " + axis +
                                              " appears more than once");
    }
  }
  if (axes.size() == kAxes.size() - 1 && std::find(axes.begin(), axes.end(), "tp") == axes.end()) {
    axes.push_back("tp");
  }
  check_field(axes.size() == kAxes.size(), "parallel.order", rule, order,
              "name dp, cp and pp once each, e.g. \"dp,cp,pp\"");
  return axes;
}

void ParallelConfig::validate() const {
  check_field(dp >= 1, "parallel.dp", ">= 1", dp);
  check_field(cp >= 1, "parallel.cp", ">= 1", cp);
  check_field(pp >= 1, "parallel.pp", ">= 1", pp);
  check_field(tp >= 1, "parallel.tp", ">= 1", tp);
  axis_order();
  check_one_of("parallel.backend", backend, {"auto", "mpi", "nccl"});
  check_field(pipeline_extra_in_flight >= 0, "parallel.pipeline_extra_in_flight", ">= 0", pipeline_extra_in_flight);
  check_field(gradient_bucket_mb > 0 && gradient_bucket_mb <= 4096, "parallel.gradient_bucket_mb", "in (0, 4096]",
              gradient_bucket_mb);
}

void ParallelConfig::check_world(int64_t world) const {
  if (world_size() == world) return;
  std::string hint;
  if (world > 0 && cp >= 1 && pp >= 1 && tp >= 1 && world % (cp * pp * tp) == 0) {
    hint = core::str_cat("set parallel.dp to ", world / (cp * pp * tp), " (= ", world, " / (cp x pp x tp)) or ");
  }
  throw ConfigError(
      std::vector<std::string>{"parallel.dp", "parallel.cp", "parallel.pp", "parallel.tp"},
      core::str_cat("parallel: dp (", dp, ") x cp (", cp, ") x pp (", pp, ") x tp (", tp, ") = ", world_size(),
                    " ranks, but the job has ", world, " ranks; ", hint, "launch ", world_size(),
                    " ranks (mpirun -np ", world_size(), ")"));
}

}  // namespace chunkflow::configs
