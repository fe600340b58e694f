// Loss curves as SVG; see loss_chart.h.
#include "trainer/loss_chart.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/file_io.h"
#include "core/strings.h"

namespace chunkflow::trainer {
namespace {

// A JSON number, or NaN for null (how metrics.jsonl writes a non-finite value).
double number_or_nan(const nlohmann::json& line, const char* key) {
  const auto found = line.find(key);
  if (found == line.end() || found->is_null()) return NAN;
  return found->get<double>();
}

LossCurvePoint point_of(const nlohmann::json& line) {
  LossCurvePoint point;
  point.step = line.at("step").get<int64_t>();
  const double loss = number_or_nan(line, "loss"), far_loss = number_or_nan(line, "far_loss");
  const auto loss_tokens = line.at("loss_tokens").get<int64_t>(), far_tokens = line.at("far_tokens").get<int64_t>();
  point.far_loss = far_tokens > 0 ? far_loss : NAN;
  const int64_t near_tokens = loss_tokens - far_tokens;
  point.near_loss = near_tokens > 0 ? (loss * static_cast<double>(loss_tokens) -
                                       (far_tokens > 0 ? far_loss * static_cast<double>(far_tokens) : 0.0)) /
                                          static_cast<double>(near_tokens)
                                    : NAN;
  return point;
}

// Means over a trailing window of `window` steps, NaN values left out (NaN if all are).
std::vector<double> moving_mean(const std::vector<double>& values, size_t window) {
  std::vector<double> means(values.size(), NAN);
  for (size_t i = 0; i < values.size(); ++i) {
    double sum = 0;
    int count = 0;
    for (size_t j = i + 1 - std::min(window, i + 1); j <= i; ++j) {
      if (std::isfinite(values[j])) {
        sum += values[j];
        ++count;
      }
    }
    if (count > 0) means[i] = sum / count;
  }
  return means;
}

struct Frame {
  double left = 70, right = 30, top = 40, bottom = 50, width = 800, height = 400;
  int64_t first_step = 0, last_step = 1;
  double low = 0, high = 1;
  double x(int64_t step) const {
    return left + (width - left - right) * static_cast<double>(step - first_step) /
                      static_cast<double>(std::max<int64_t>(1, last_step - first_step));
  }
  double y(double loss) const { return top + (height - top - bottom) * (high - loss) / std::max(high - low, 1e-12); }
};

// A polyline through the finite values, broken where a value is missing.
std::string polyline(const Frame& frame, const std::vector<LossCurvePoint>& points, const std::vector<double>& values,
                     const std::string& style) {
  std::string svg, coordinates;
  const auto flush = [&] {
    if (!coordinates.empty()) svg += core::str_cat("<polyline fill=\"none\" ", style, " points=\"", coordinates, "\"/>\n");
    coordinates.clear();
  };
  for (size_t i = 0; i < points.size(); ++i) {
    if (!std::isfinite(values[i])) {
      flush();
      continue;
    }
    coordinates += core::str_cat(coordinates.empty() ? "" : " ", core::format_fixed(frame.x(points[i].step), 1), ",",
                                 core::format_fixed(frame.y(values[i]), 1));
  }
  flush();
  return svg;
}

std::string axes(const Frame& frame) {
  std::string svg;
  // One grid line per nat while that gives at most 10, else five equal steps.
  const double range = frame.high - frame.low;
  const int ticks = range <= 10 && range == std::floor(range) ? static_cast<int>(range) : 5;
  for (int tick = 0; tick <= ticks; ++tick) {
    const double loss = frame.low + range * tick / ticks;
    const double y = frame.y(loss);
    svg += core::str_cat("<line x1=\"", frame.left, "\" x2=\"", frame.width - frame.right, "\" y1=\"",
                         core::format_fixed(y, 1), "\" y2=\"", core::format_fixed(y, 1), "\" stroke=\"#ddd\"/>\n",
                         "<text x=\"", frame.left - 6, "\" y=\"", core::format_fixed(y + 4, 1), "\" text-anchor=\"end\">",
                         core::format_fixed(loss, 2), "</text>\n");
  }
  for (int tick = 0; tick <= 4; ++tick) {
    const int64_t step = frame.first_step + (frame.last_step - frame.first_step) * tick / 4;
    svg += core::str_cat("<text x=\"", core::format_fixed(frame.x(step), 1), "\" y=\"", frame.height - frame.bottom + 16,
                         "\" text-anchor=\"middle\">", step, "</text>\n");
  }
  const double plot_bottom = frame.height - frame.bottom;
  svg += core::str_cat(
      "<line x1=\"", frame.left, "\" x2=\"", frame.left, "\" y1=\"", frame.top, "\" y2=\"", plot_bottom, "\" stroke=\"black\"/>\n",
      "<line x1=\"", frame.left, "\" x2=\"", frame.width - frame.right, "\" y1=\"", plot_bottom, "\" y2=\"", plot_bottom,
      "\" stroke=\"black\"/>\n<text x=\"", frame.width / 2, "\" y=\"", frame.height - 10,
      "\" text-anchor=\"middle\">step</text>\n<text transform=\"translate(18,", (frame.top + plot_bottom) / 2,
      ") rotate(-90)\" text-anchor=\"middle\">cross-entropy loss (nats)</text>\n");
  return svg;
}

std::string legend(const Frame& frame) {
  const double x = frame.width - frame.right - 330, y = frame.top + 8;
  return core::str_cat(
      "<rect x=\"", x, "\" y=\"", y, "\" width=\"12\" height=\"4\" fill=\"#4477aa\"/><text x=\"", x + 18, "\" y=\"", y + 6,
      "\">near tokens (target inside its sequence's first chunk)</text>\n<rect x=\"", x, "\" y=\"", y + 16,
      "\" width=\"12\" height=\"4\" fill=\"#cc3311\"/><text x=\"", x + 18, "\" y=\"", y + 22,
      "\">far tokens (target beyond the first chunk)</text>\n");
}

}  // namespace

std::vector<LossCurvePoint> read_loss_curves(const std::string& metrics_path) {
  std::istringstream lines(core::read_file(metrics_path));
  std::vector<LossCurvePoint> points;
  std::string line;
  for (int64_t number = 1; std::getline(lines, line); ++number) {
    if (line.empty()) continue;
    try {
      points.push_back(point_of(nlohmann::json::parse(line)));
    } catch (const nlohmann::json::exception& error) {
      CF_FAIL(metrics_path, ":", number, ": not a step record of metrics.jsonl (", error.what(), ")");
    }
  }
  return points;
}

std::string loss_chart_svg(const std::vector<LossCurvePoint>& points, const std::string& title) {
  Frame frame;
  std::vector<double> near, far;
  frame.high = -INFINITY;
  frame.low = INFINITY;
  for (const auto& point : points) {
    near.push_back(point.near_loss);
    far.push_back(point.far_loss);
    for (const double value : {point.near_loss, point.far_loss}) {
      if (!std::isfinite(value)) continue;
      frame.low = std::min(frame.low, value);
      frame.high = std::max(frame.high, value);
    }
  }
  if (!std::isfinite(frame.low)) frame.low = 0, frame.high = 1;  // no finite loss at all: an empty frame
  frame.low = std::max(0.0, std::floor(frame.low));
  frame.high = std::max(frame.low + 1, std::ceil(frame.high));
  if (!points.empty()) {
    frame.first_step = points.front().step;
    frame.last_step = std::max(points.back().step, frame.first_step + 1);
  }
  const size_t window = std::max<size_t>(1, points.size() / 25);
  std::string svg = core::str_cat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"", frame.width, "\" height=\"", frame.height,
      "\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
      "<text x=\"", frame.width / 2, "\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">", core::xml_escape(title),
      "</text>\n", axes(frame));
  svg += polyline(frame, points, near, "stroke=\"#4477aa\" stroke-opacity=\"0.3\"");
  svg += polyline(frame, points, far, "stroke=\"#cc3311\" stroke-opacity=\"0.3\"");
  svg += polyline(frame, points, moving_mean(near, window), "stroke=\"#4477aa\" stroke-width=\"2.5\"");
  svg += polyline(frame, points, moving_mean(far, window), "stroke=\"#cc3311\" stroke-width=\"2.5\"");
  return svg + legend(frame) + "</svg>\n";
}

}  // namespace chunkflow::trainer
