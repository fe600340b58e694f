// Each method follows transformers' _compute_*_parameters step by step, in fp32 where it works on
// fp32 tensors (python scalars meet those tensors as fp32) and in double where it is python math.
#include "kernels/rope_frequencies.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.h"

namespace chunkflow::kernels {
namespace {

std::vector<float> default_inv_freq(double theta, int64_t head_dim) {
  std::vector<float> inv_freq(static_cast<size_t>(head_dim / 2));
  for (size_t i = 0; i < inv_freq.size(); ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv_freq[i] = 1.0f / std::pow(static_cast<float>(theta), exponent);
  }
  return inv_freq;
}

std::vector<float> llama3_inv_freq(std::vector<float> inv_freq, const RopeScaling& scaling) {
  const auto factor = static_cast<float>(scaling.factor);
  const auto original = static_cast<double>(scaling.original_max_position_embeddings);
  const auto low_freq_wavelen = static_cast<float>(original / scaling.low_freq_factor);
  const auto high_freq_wavelen = static_cast<float>(original / scaling.high_freq_factor);
  const auto low_freq_factor = static_cast<float>(scaling.low_freq_factor);
  const auto smooth_span = static_cast<float>(scaling.high_freq_factor - scaling.low_freq_factor);
  const auto two_pi = static_cast<float>(2.0 * std::numbers::pi);
  for (float& frequency : inv_freq) {
    const float wavelen = two_pi / frequency;
    // Long wavelengths are interpolated, short ones kept, the band between blended smoothly.
    const float kept_or_divided = wavelen > low_freq_wavelen ? frequency / factor : frequency;
    const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
    if (medium) {
      const float smooth = (static_cast<float>(original) / wavelen - low_freq_factor) / smooth_span;
      frequency = (1.0f - smooth) * kept_or_divided / factor + smooth * kept_or_divided;
    } else {
      frequency = kept_or_divided;
    }
  }
  return inv_freq;
}

double yarn_mscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

// The (fractional) dimension whose frequency turns `rotations` times over `positions`.
double yarn_correction_dim(double rotations, int64_t head_dim, double theta, double positions) {
  return static_cast<double>(head_dim) * std::log(positions / (rotations * 2.0 * std::numbers::pi)) /
         (2.0 * std::log(theta));
}

RopeFrequencies yarn_frequencies(double theta, int64_t head_dim, int64_t max_position_embeddings,
                                 const RopeScaling& scaling) {
  const double original = static_cast<double>(scaling.original_max_position_embeddings > 0
                                                   ? scaling.original_max_position_embeddings
                                                   : max_position_embeddings);
  double low = yarn_correction_dim(scaling.beta_fast, head_dim, theta, original);
  double high = yarn_correction_dim(scaling.beta_slow, head_dim, theta, original);
  if (scaling.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(head_dim - 1));
  if (low == high) high += 0.001;  // transformers' guard against a zero-width ramp
  const auto factor = static_cast<float>(scaling.factor);
  const auto ramp_start = static_cast<float>(low), ramp_width = static_cast<float>(high - low);
  RopeFrequencies result{std::vector<float>(static_cast<size_t>(head_dim / 2)), 1.0f};
  for (size_t i = 0; i < result.inv_freq.size(); ++i) {
    // transformers' pos_freqs = theta^(2i / head_dim), divided into 1 and into factor * 1.
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    const float power = std::pow(static_cast<float>(theta), exponent);
    const float extrapolation = 1.0f / power;
    const float interpolation = 1.0f / (factor * power);
    const float ramp = std::clamp((static_cast<float>(i) - ramp_start) / ramp_width, 0.0f, 1.0f);
    const float extrapolation_share = 1.0f - ramp;
    result.inv_freq[i] = interpolation * (1.0f - extrapolation_share) + extrapolation * extrapolation_share;
  }
  double attention = scaling.attention_factor;
  if (attention == 0.0) {
    attention = scaling.mscale != 0.0 && scaling.mscale_all_dim != 0.0
                    ? yarn_mscale(scaling.factor, scaling.mscale) / yarn_mscale(scaling.factor, scaling.mscale_all_dim)
                    : yarn_mscale(scaling.factor, 1.0);
  }
  result.attention_scaling = static_cast<float>(attention);
  return result;
}

void check_scaling(const RopeScaling& scaling) {
  CF_CHECK(scaling.type == "default" || scaling.type == "linear" || scaling.type == "llama3" || scaling.type == "yarn",
           "rope type \"", scaling.type, "\" is not supported; supported are ", supported_rope_types(),
           " (dynamic and longrope recompute the frequencies from each forward call's longest position, "
           "so a token's encoding would depend on how its batch is cut)");
  if (scaling.type == "default") return;
  CF_CHECK(std::isfinite(scaling.factor) && scaling.factor >= 1.0, "rope type ", scaling.type,
           ": factor must be >= 1 (the context is extended by it), got ", scaling.factor);
  if (scaling.type == "llama3") {
    CF_CHECK(scaling.original_max_position_embeddings > 0,
             "rope type llama3: original_max_position_embeddings must be > 0 (the pre-training context), got ",
             scaling.original_max_position_embeddings);
    CF_CHECK(scaling.low_freq_factor > 0 && scaling.high_freq_factor > scaling.low_freq_factor,
             "rope type llama3: needs 0 < low_freq_factor < high_freq_factor, got low_freq_factor = ",
             scaling.low_freq_factor, ", high_freq_factor = ", scaling.high_freq_factor);
  }
  if (scaling.type == "yarn") {
    CF_CHECK(scaling.original_max_position_embeddings >= 0,
             "rope type yarn: original_max_position_embeddings must be >= 0 (0 = max_position_embeddings), got ",
             scaling.original_max_position_embeddings);
    CF_CHECK(scaling.beta_fast > 0 && scaling.beta_slow > 0, "rope type yarn: beta_fast and beta_slow must be > 0, got ",
             scaling.beta_fast, " and ", scaling.beta_slow);
    CF_CHECK(scaling.attention_factor >= 0 && std::isfinite(scaling.attention_factor),
             "rope type yarn: attention_factor must be >= 0 (0 = derived from factor), got ", scaling.attention_factor);
  }
}

}  // namespace

const char* supported_rope_types() { return "default, linear, llama3, yarn"; }

RopeFrequencies rope_frequencies(double theta, int64_t head_dim, int64_t max_position_embeddings,
                                 const RopeScaling& scaling) {
  CF_CHECK(std::isfinite(theta) && theta > 0.0, "rope_theta must be finite and > 0, got ", theta);
  CF_CHECK(head_dim > 0 && head_dim % 2 == 0, "RoPE needs an even head_dim > 0, got ", head_dim);
  check_scaling(scaling);
  if (scaling.type == "yarn") return yarn_frequencies(theta, head_dim, max_position_embeddings, scaling);
  RopeFrequencies result{default_inv_freq(theta, head_dim), 1.0f};
  if (scaling.type == "linear") {
    for (float& frequency : result.inv_freq) frequency /= static_cast<float>(scaling.factor);
  } else if (scaling.type == "llama3") {
    result.inv_freq = llama3_inv_freq(std::move(result.inv_freq), scaling);
  }
  return result;
}

}  // namespace chunkflow::kernels
