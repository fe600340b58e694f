// The loss chart: near losses recovered from metrics.jsonl's totals, steps without far tokens
// left out of the far line, errors naming path:line, and an SVG that draws both series.
#include "trainer/loss_chart.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "core/file_io.h"
#include "tests/support/expect_error.h"
#include "tests/support/temp_dir.h"

namespace chunkflow::trainer {
namespace {

using chunkflow::testing::expect_error_mentions;

size_t count_of(const std::string& text, const std::string& part) {
  size_t count = 0;
  for (size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++count;
  return count;
}

TEST(LossChartTest, NearLossIsTheRestOfTheLossTokens) {
  testing::TempDir folder;
  const std::string path = folder.file("metrics.jsonl");
  // Step 1: 10 loss tokens at mean 3, 4 of them far at mean 6 -> near = (30 - 24) / 6 = 1.
  // Step 2: no far tokens (far_loss null). Step 3: every loss token far.
  core::write_file_atomic(path,
                          "{\"step\":1,\"loss\":3.0,\"far_loss\":6.0,\"loss_tokens\":10,\"far_tokens\":4}\n"
                          "{\"step\":2,\"loss\":2.5,\"far_loss\":null,\"loss_tokens\":8,\"far_tokens\":0}\n"
                          "\n"
                          "{\"step\":3,\"loss\":4.0,\"far_loss\":4.0,\"loss_tokens\":5,\"far_tokens\":5}\n");
  const std::vector<LossCurvePoint> points = read_loss_curves(path);
  ASSERT_EQ(points.size(), 3u);
  EXPECT_EQ(points[0].step, 1);
  EXPECT_DOUBLE_EQ(points[0].near_loss, 1.0);
  EXPECT_DOUBLE_EQ(points[0].far_loss, 6.0);
  EXPECT_DOUBLE_EQ(points[1].near_loss, 2.5);
  EXPECT_TRUE(std::isnan(points[1].far_loss));
  EXPECT_TRUE(std::isnan(points[2].near_loss));
  EXPECT_DOUBLE_EQ(points[2].far_loss, 4.0);
}

TEST(LossChartTest, ALineThatIsNotAStepRecordNamesFileAndLine) {
  testing::TempDir folder;
  const std::string path = folder.file("metrics.jsonl");
  core::write_file_atomic(path, "{\"step\":1,\"loss\":3.0,\"far_loss\":6.0,\"loss_tokens\":10,\"far_tokens\":4}\n"
                                "{\"step\":2,\"loss\":3.0}\n");
  expect_error_mentions([&] { read_loss_curves(path); }, {path + ":2:", "not a step record"});
  core::write_file_atomic(path, "not json\n");
  expect_error_mentions([&] { read_loss_curves(path); }, {path + ":1:"});
}

TEST(LossChartTest, DrawsBothSeriesAndBreaksLinesAtMissingSteps) {
  std::vector<LossCurvePoint> points;
  for (int64_t step = 1; step <= 50; ++step) {
    // Far tokens missing at step 25: the far lines break there.
    points.push_back({step, 5.0 - 0.01 * static_cast<double>(step), step == 25 ? NAN : 6.0 - 0.08 * static_cast<double>(step)});
  }
  const std::string svg = loss_chart_svg(points, "run <demo> & co");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("run &lt;demo&gt; &amp; co"), std::string::npos);
  // Per-step and moving-mean lines: near unbroken (2), far broken at step 25 in the per-step line
  // (2); its moving mean spans the gap (window 2 keeps a value there).
  EXPECT_EQ(count_of(svg, "<polyline"), 5u);
  EXPECT_NE(svg.find("near tokens"), std::string::npos);
  EXPECT_NE(svg.find("far tokens"), std::string::npos);
  // The y axis covers the data, one grid line per nat: lowest 2.0 (far at step 50), highest 6.0
  // (far at step 1 is 5.92, rounded up).
  EXPECT_NE(svg.find(">2.00<"), std::string::npos);
  EXPECT_NE(svg.find(">4.00<"), std::string::npos);
  EXPECT_NE(svg.find(">6.00<"), std::string::npos);
  EXPECT_EQ(svg.find(">7.00<"), std::string::npos);
  // No data at all still gives a well-formed (empty) chart.
  const std::string empty = loss_chart_svg({}, "empty");
  EXPECT_NE(empty.find("</svg>"), std::string::npos);
  EXPECT_EQ(count_of(empty, "<polyline"), 0u);
}

}  // namespace
}  // namespace chunkflow::trainer
