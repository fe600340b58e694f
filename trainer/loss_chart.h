// The run's loss curves as an image: near tokens against far tokens, step by step. The trainer
// writes <run_dir>/loss.svg from metrics.jsonl when a run ends (a resumed run's chart covers
// every step), so a reader sees without tools whether the model learned what only attention
// across chunks can teach it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace chunkflow::trainer {

// One step's mean losses. Near tokens: targets inside the first chunk of their sequence; far
// tokens: targets beyond it (what predicts them may lie in an earlier chunk, reachable only
// through the K/V state). NaN where the step had no such tokens (or no loss tokens at all).
struct LossCurvePoint {
  int64_t step = 0;
  double near_loss = 0;
  double far_loss = 0;
};

// Reads metrics.jsonl (the trainer's per-step lines: step, loss, far_loss, loss_tokens,
// far_tokens). near_loss = (loss x loss_tokens - far_loss x far_tokens) / (loss_tokens - far_tokens).
// Throws core::Error naming path:line for a line that is not such a record.
std::vector<LossCurvePoint> read_loss_curves(const std::string& metrics_path);

// The chart: one faint line per series with its per-step values, and a bold moving mean over
// max(1, steps / 25) steps on top (single steps are noisy: every global batch has its own mix of
// short and long sequences). `title` is drawn above it (XML-escaped).
std::string loss_chart_svg(const std::vector<LossCurvePoint>& points, const std::string& title);

}  // namespace chunkflow::trainer
