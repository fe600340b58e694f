// RoPE's inverse frequencies and cos/sin scaling, with the context-extension methods of Hugging
// Face transformers (modeling_rope_utils.py), in the same fp32 arithmetic, so that an imported
// model rotates exactly as transformers rotates it. The rotary kernels (fused_ops.h) take the
// table this computes; the model computes it once per layer at construction.
//
//   default  inv_freq[i] = 1 / theta^(2i / head_dim)
//   linear   default / factor (position interpolation)
//   llama3   Llama 3.1's: long wavelengths (> original / low_freq_factor) divided by factor,
//            short ones (< original / high_freq_factor) kept, a smooth blend between
//   yarn     YaRN: interpolation (/ factor) and extrapolation blended by a linear ramp over the
//            dimensions whose rotation counts over `original` positions fall between beta_slow
//            and beta_fast; cos and sin scaled by attention_factor (default 0.1 ln(factor) + 1,
//            or the mscale / mscale_all_dim ratio when both are given)
//
// Not here, on purpose: transformers' "dynamic" (NTK) and "longrope" recompute the frequencies
// from the longest position of each forward call, so one token is encoded differently depending
// on how a batch is cut: no chunked or packed training can be exact against that.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace chunkflow::kernels {

struct RopeScaling {
  std::string type = "default";               // default | linear | llama3 | yarn
  double factor = 1.0;                         // linear, llama3, yarn: >= 1
  int64_t original_max_position_embeddings = 0;  // llama3: > 0; yarn: 0 = max_position_embeddings
  double low_freq_factor = 1.0;                // llama3
  double high_freq_factor = 4.0;               // llama3, > low_freq_factor
  double beta_fast = 32.0;                     // yarn
  double beta_slow = 1.0;                      // yarn
  double attention_factor = 0.0;               // yarn: 0 = derived from factor (and mscale)
  double mscale = 0.0;                         // yarn: 0 = unset
  double mscale_all_dim = 0.0;                 // yarn: 0 = unset
  bool truncate = true;                        // yarn: round the correction range outwards

  bool operator==(const RopeScaling&) const = default;
};

struct RopeFrequencies {
  std::vector<float> inv_freq;    // [head_dim / 2] fp32
  float attention_scaling = 1.0f;  // multiplies cos and sin (1 except for yarn)
};

// The rope types this build implements, for error messages: "default, linear, llama3, yarn".
const char* supported_rope_types();

// The table for a head of `head_dim` (even, > 0) rotating with base `theta` (> 0);
// `max_position_embeddings` is yarn's fallback for original_max_position_embeddings. Throws
// core::Error naming the broken rule (unknown type, factor < 1, ...).
RopeFrequencies rope_frequencies(double theta, int64_t head_dim, int64_t max_position_embeddings,
                                 const RopeScaling& scaling);

}  // namespace chunkflow::kernels
