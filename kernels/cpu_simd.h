// Building blocks of the CPU kernels (fused ops, tiled cross-entropy, varlen attention): the
// parallel grain, function clones per instruction set, fixed-lane row sums and maxima, and an exp
// that vectorises. Every result is the same whichever clone runs and however rows are split among
// threads, so the CPU kernels are deterministic from run to run. Internal to kernels/.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

namespace chunkflow::kernels::cpu_simd {

// Row sums run in this many fixed lanes (see lane_sum).
constexpr int kLanes = 16;

// Elements one at::parallel_for task should cover at least: below this, waking a thread costs
// more than the work. grain_rows: the same in rows of `row_elements` elements.
constexpr int64_t kGrainElements = 32768;
inline int64_t grain_rows(int64_t row_elements) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, row_elements));
}

// The CPU kernels' hot loops are `#pragma omp simd` loops in CF_SIMD_CLONES functions: on x86-64
// with GCC each is compiled for AVX-512, AVX2 and the baseline, and the loader picks the one the CPU runs (an ifunc). Per-element
// arithmetic is the same in every clone, and the row sums keep a fixed lane order, so results do
// not depend on which clone runs.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CF_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CF_SIMD_CLONES
#endif

// sum_j term(j) for j in [0, n): lane l adds terms l, l + kLanes, ... in order, then the lanes add
// in order. Vectorises to 1, 2 or 4 registers with the same rounding everywhere; each lane sums
// n / 16 terms, so a long row's error stays near a blocked sum's.
template <typename Term>
[[gnu::always_inline]] inline float lane_sum(int64_t n, const Term& term) {
  float lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
#pragma omp simd
    for (int lane = 0; lane < kLanes; ++lane) lanes[lane] += term(j + lane);
  }
  for (int lane = 0; j + lane < n; ++lane) lanes[lane] += term(j + lane);
  float total = 0.0f;
  for (int lane = 0; lane < kLanes; ++lane) total += lanes[lane];
  return total;
}

// Floats as integers that order like the floats' values (sign-magnitude -> two's complement), so
// clamps and range tests are integer min/max and compares: float compares may trap on NaN, which
// keeps GCC from vectorising a loop that branches on them.
constexpr int32_t ordered_bits(float value) {
  const auto bits = std::bit_cast<int32_t>(value);
  return bits ^ ((bits >> 31) & 0x7fffffff);
}
constexpr float from_ordered_bits(int32_t key) {
  return std::bit_cast<float>(key ^ ((key >> 31) & 0x7fffffff));
}

// exp(x) in arithmetic that vectorises (std::exp does not without -ffast-math), within 1 ulp of
// the correctly rounded value: x = n ln2 + r with n = round(x / ln2) and ln2 in two parts
// (Cody-Waite), |r| <= ln2 / 2, e^r by Cephes' expf polynomial, 2^n as two exponent-bit factors
// so that 2^128 does not overflow early. Special values as std::exp: overflow gives inf, NaN stays
// NaN, -inf gives 0; results below FLT_MIN (x < -87.34) are flushed to 0.
[[gnu::always_inline]] inline float exp_simd(float x) {
  constexpr float kMax = 88.7228317f;   // ln(FLT_MAX): above, exp overflows
  constexpr float kMin = -87.3365479f;  // ln(FLT_MIN): below, exp is subnormal
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2High = 0.693359375f;  // 9 significant bits: n * kLn2High is exact
  constexpr float kLn2Low = -2.12194440e-4f;
  constexpr float kRound = 12582912.0f;     // 1.5 * 2^23: adding it rounds to an integer
  const int32_t key = ordered_bits(x);
  const float clamped = from_ordered_bits(std::clamp(key, ordered_bits(kMin), ordered_bits(kMax)));
  const float n = (clamped * kLog2e + kRound) - kRound;  // in [-126, 128]
  const float r = (clamped - n * kLn2High) - n * kLn2Low;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const auto exponent = static_cast<int32_t>(n);
  const int32_t low_half = exponent >> 1;
  const float result = p * std::bit_cast<float>((low_half + 127) << 23) *
                       std::bit_cast<float>((exponent - low_half + 127) << 23);
  // All-ones masks select inf above kMax, 0 below kMin and x itself for NaN.
  const int32_t is_nan = -static_cast<int32_t>((std::bit_cast<int32_t>(x) & 0x7fffffff) > 0x7f800000);
  const int32_t overflows = -static_cast<int32_t>(key > ordered_bits(kMax));
  const int32_t underflows = -static_cast<int32_t>(key < ordered_bits(kMin));
  const int32_t finite = (std::bit_cast<int32_t>(result) & ~overflows & ~underflows) | (0x7f800000 & overflows);
  return std::bit_cast<float>((finite & ~is_nan) | (std::bit_cast<int32_t>(x) & is_nan));
}

// max_j value(j) for j in [0, n), in the same fixed lanes as lane_sum, as ordered integers (see
// ordered_bits) so that it vectorises; a NaN with the sign bit clear wins over every number.
template <typename Value>
[[gnu::always_inline]] inline float lane_max(int64_t n, const Value& value) {
  int32_t lanes[kLanes];
  std::fill(lanes, lanes + kLanes, ordered_bits(-std::numeric_limits<float>::infinity()));
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
#pragma omp simd
    for (int lane = 0; lane < kLanes; ++lane) lanes[lane] = std::max(lanes[lane], ordered_bits(value(j + lane)));
  }
  for (int lane = 0; j + lane < n; ++lane) lanes[lane] = std::max(lanes[lane], ordered_bits(value(j + lane)));
  return from_ordered_bits(*std::max_element(lanes, lanes + kLanes));
}

// values[i] = exp_simd(values[i]) for i in [0, count), vectorised (cpu_simd.cpp). The CPU kernels
// use it instead of torch's exp_: with MKL, the vector exp behind exp_ gave different values
// from run to run on the same input (2026-12-05, a [1000, 5] tile: 3 runs in 200; none with
// MKL_NUM_THREADS=1), and the CPU kernels must give the same result every run.
void exp_in_place(float* values, int64_t count);

}  // namespace chunkflow::kernels::cpu_simd
