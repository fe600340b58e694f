// CPU path of the fused element-wise ops (kernels/fused_ops.h) and their check_params: fp32,
// multi-threaded with at::parallel_for over rows (element blocks for SwiGLU), each hot loop a
// SIMD loop. Every row is computed by the same code wherever it falls in a thread's range, so a
// row's result does not depend on the thread count or on the other rows of the call.
#include "kernels/fused_ops.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "kernels/cpu_simd.h"

namespace chunkflow::kernels {
namespace {

using namespace cpu_simd;

// Upper bound on RMSNorm's weight-gradient partials (rms_norm_weight_partials).
constexpr int64_t kMaxWeightPartials = 256;

void check_dtype(ScalarType dtype, const char* op) {
  const int value = static_cast<int>(dtype);
  CF_CHECK(value >= 0 && value <= static_cast<int>(ScalarType::kFloat16), op,
           ": dtype must be kFloat32, kBFloat16 or kFloat16, got ScalarType(", value, ")");
}

void check_cpu_dtype(ScalarType dtype, const char* op) {
  CF_CHECK(dtype == ScalarType::kFloat32, op, ": the CPU path takes float32, got ",
           scalar_type_name(dtype), "; convert the tensors to float32 or use the CUDA path");
}

// A buffer of `elements` elements must be non-null unless it is empty.
void check_buffer(const void* pointer, int64_t elements, const char* op, const char* name,
                  const char* shape) {
  CF_CHECK(pointer != nullptr || elements == 0, op, ": params.", name, " ", shape,
           " must not be null when it has elements (", elements, ")");
}

CF_SIMD_CLONES void rms_norm_forward_rows(const float* x, const float* weight, float* out,
                                          float* rstd, int64_t begin, int64_t end, int64_t hidden,
                                          float eps) {
  for (int64_t row = begin; row < end; ++row) {
    const float* x_row = x + row * hidden;
    float* out_row = out + row * hidden;
    const float squares = lane_sum(hidden, [&](int64_t j) { return x_row[j] * x_row[j]; });
    const float row_rstd = 1.0f / std::sqrt(squares / static_cast<float>(hidden) + eps);
    rstd[row] = row_rstd;
#pragma omp simd
    for (int64_t j = 0; j < hidden; ++j) out_row[j] = weight[j] * (x_row[j] * row_rstd);
  }
}

// Rows [begin, end) of the backward; their weight-gradient contributions go to `partial` [hidden]
// (overwritten).
CF_SIMD_CLONES void rms_norm_backward_rows(const float* x, const float* weight, const float* rstd,
                                           const float* dout, float* dx, float* partial,
                                           int64_t begin, int64_t end, int64_t hidden) {
  std::fill(partial, partial + hidden, 0.0f);
  for (int64_t row = begin; row < end; ++row) {
    const float* x_row = x + row * hidden;
    const float* dout_row = dout + row * hidden;
    float* dx_row = dx + row * hidden;
    const float row_rstd = rstd[row];
    const float dot =
        lane_sum(hidden, [&](int64_t j) { return dout_row[j] * weight[j] * x_row[j]; });
    const float correction = row_rstd * row_rstd * row_rstd * dot / static_cast<float>(hidden);
#pragma omp simd
    for (int64_t j = 0; j < hidden; ++j) {
      dx_row[j] = row_rstd * (dout_row[j] * weight[j]) - x_row[j] * correction;
      partial[j] += dout_row[j] * (x_row[j] * row_rstd);
    }
  }
}

// Tokens [begin, end): cos/sin of the token's angles once, then every head. sin is pre-negated
// for the inverse rotation.
CF_SIMD_CLONES void rotate_tokens(const float* in, const int64_t* positions, float* out,
                                  const float* inv_freq, float scaling, float direction,
                                  int64_t begin, int64_t end, int64_t heads, int64_t head_dim) {
  const int64_t half = head_dim / 2;
  std::vector<float> cos_table(static_cast<size_t>(half)), sin_table(static_cast<size_t>(half));
  float* c = cos_table.data();
  float* s = sin_table.data();
  for (int64_t token = begin; token < end; ++token) {
    const float position = static_cast<float>(positions[token]);
    for (int64_t i = 0; i < half; ++i) {
      const float angle = position * inv_freq[i];
      c[i] = std::cos(angle) * scaling;
      s[i] = direction * (std::sin(angle) * scaling);
    }
    for (int64_t head = 0; head < heads; ++head) {
      const float* in_row = in + (token * heads + head) * head_dim;
      float* out_row = out + (token * heads + head) * head_dim;
      // Pairs (i, i + half) are read before either is written, so out may alias in.
#pragma omp simd
      for (int64_t i = 0; i < half; ++i) {
        const float first = in_row[i], second = in_row[i + half];
        out_row[i] = first * c[i] - second * s[i];
        out_row[i + half] = second * c[i] + first * s[i];
      }
    }
  }
}

CF_SIMD_CLONES void swiglu_forward_range(const float* gate, const float* up, float* out,
                                         int64_t begin, int64_t end) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) out[i] = gate[i] / (1.0f + exp_simd(-gate[i])) * up[i];
}

CF_SIMD_CLONES void swiglu_backward_range(const float* gate, const float* up, const float* dout,
                                          float* dgate, float* dup, int64_t begin, int64_t end) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    // The composite's order of operations: silu(g) = g / (1 + exp(-g)), and the gradient
    // reaching silu (dout * up) times sigmoid times (1 + g (1 - sigmoid)).
    const float g = gate[i];
    const float e = exp_simd(-g);
    const float s = 1.0f / (1.0f + e);
    dup[i] = dout[i] * (g / (1.0f + e));
    dgate[i] = dout[i] * up[i] * s * (1.0f + g * (1.0f - s));
  }
}

}  // namespace

int64_t rms_norm_weight_partials(int64_t rows) {
  return std::clamp<int64_t>(rows, 0, kMaxWeightPartials);
}

void check_params(const RmsNormParams& params) {
  constexpr const char* kOp = "rms_norm_forward";
  check_dtype(params.dtype, kOp);
  CF_CHECK(params.rows >= 0, kOp, ": rows must be >= 0, got ", params.rows);
  CF_CHECK(params.hidden > 0, kOp, ": hidden must be > 0, got ", params.hidden);
  CF_CHECK(params.eps >= 0.0f && std::isfinite(params.eps), kOp,
           ": eps must be finite and >= 0, got ", params.eps);
  const int64_t elements = params.rows * params.hidden;
  check_buffer(params.x, elements, kOp, "x", "[rows, hidden]");
  check_buffer(params.weight, params.hidden, kOp, "weight", "[hidden]");
  check_buffer(params.out, elements, kOp, "out", "[rows, hidden]");
  check_buffer(params.rstd, params.rows, kOp, "rstd", "[rows]");
}

void check_params(const RmsNormBackwardParams& params) {
  constexpr const char* kOp = "rms_norm_backward";
  check_dtype(params.dtype, kOp);
  CF_CHECK(params.rows >= 0, kOp, ": rows must be >= 0, got ", params.rows);
  CF_CHECK(params.hidden > 0, kOp, ": hidden must be > 0, got ", params.hidden);
  const int64_t elements = params.rows * params.hidden;
  check_buffer(params.x, elements, kOp, "x", "[rows, hidden]");
  check_buffer(params.weight, params.hidden, kOp, "weight", "[hidden]");
  check_buffer(params.rstd, params.rows, kOp, "rstd", "[rows]");
  check_buffer(params.dout, elements, kOp, "dout", "[rows, hidden]");
  check_buffer(params.dx, elements, kOp, "dx", "[rows, hidden]");
  check_buffer(params.dweight, params.hidden, kOp, "dweight", "[hidden]");
  check_buffer(params.dweight_workspace, rms_norm_weight_partials(params.rows) * params.hidden,
               kOp, "dweight_workspace", "[rms_norm_weight_partials(rows), hidden]");
}

void check_params(const RotaryParams& params) {
  constexpr const char* kOp = "rotary";
  check_dtype(params.dtype, kOp);
  CF_CHECK(params.tokens >= 0 && params.heads >= 0, kOp,
           ": tokens and heads must be >= 0, got tokens = ", params.tokens,
           ", heads = ", params.heads);
  CF_CHECK(params.head_dim > 0 && params.head_dim % 2 == 0, kOp,
           ": head_dim must be even and > 0 (rotate-half pairs element i with i + head_dim / 2), "
           "got ", params.head_dim);
  CF_CHECK(params.attention_scaling > 0.0f && std::isfinite(params.attention_scaling), kOp,
           ": attention_scaling must be finite and > 0, got ", params.attention_scaling);
  const int64_t elements = params.tokens * params.heads * params.head_dim;
  check_buffer(params.in, elements, kOp, "in", "[tokens, heads, head_dim]");
  check_buffer(params.inv_freq, elements == 0 ? 0 : params.head_dim / 2, kOp, "inv_freq", "[head_dim / 2]");
  check_buffer(params.out, elements, kOp, "out", "[tokens, heads, head_dim]");
  check_buffer(params.positions, elements == 0 ? 0 : params.tokens, kOp, "positions", "[tokens]");
}

void check_params(const SwigluParams& params) {
  constexpr const char* kOp = "swiglu_forward";
  check_dtype(params.dtype, kOp);
  CF_CHECK(params.elements >= 0, kOp, ": elements must be >= 0, got ", params.elements);
  check_buffer(params.gate, params.elements, kOp, "gate", "[elements]");
  check_buffer(params.up, params.elements, kOp, "up", "[elements]");
  check_buffer(params.out, params.elements, kOp, "out", "[elements]");
}

void check_params(const SwigluBackwardParams& params) {
  constexpr const char* kOp = "swiglu_backward";
  check_dtype(params.dtype, kOp);
  CF_CHECK(params.elements >= 0, kOp, ": elements must be >= 0, got ", params.elements);
  check_buffer(params.gate, params.elements, kOp, "gate", "[elements]");
  check_buffer(params.up, params.elements, kOp, "up", "[elements]");
  check_buffer(params.dout, params.elements, kOp, "dout", "[elements]");
  check_buffer(params.dgate, params.elements, kOp, "dgate", "[elements]");
  check_buffer(params.dup, params.elements, kOp, "dup", "[elements]");
}

void rms_norm_forward_cpu(const RmsNormParams& params) {
  check_params(params);
  check_cpu_dtype(params.dtype, "rms_norm_forward_cpu");
  at::parallel_for(0, params.rows, grain_rows(params.hidden), [&](int64_t begin, int64_t end) {
    rms_norm_forward_rows(static_cast<const float*>(params.x), static_cast<const float*>(params.weight),
                          static_cast<float*>(params.out), params.rstd, begin, end, params.hidden, params.eps);
  });
}

void rms_norm_backward_cpu(const RmsNormBackwardParams& params) {
  check_params(params);
  check_cpu_dtype(params.dtype, "rms_norm_backward_cpu");
  const int64_t rows = params.rows, hidden = params.hidden;
  const auto* x = static_cast<const float*>(params.x);
  const auto* weight = static_cast<const float*>(params.weight);
  const auto* dout = static_cast<const float*>(params.dout);
  auto* dx = static_cast<float*>(params.dx);
  auto* dweight = static_cast<float*>(params.dweight);
  const int64_t partials = rms_norm_weight_partials(rows);
  if (partials == 0) {
    std::fill(dweight, dweight + hidden, 0.0f);
    return;
  }
  // Each block of rows owns one workspace row: no two threads add into the same floats.
  const int64_t grain = std::max<int64_t>(1, grain_rows(hidden) * partials / rows);
  at::parallel_for(0, partials, grain, [&](int64_t block_begin, int64_t block_end) {
    for (int64_t block = block_begin; block < block_end; ++block) {
      rms_norm_backward_rows(x, weight, params.rstd, dout, dx, params.dweight_workspace + block * hidden,
                             block * rows / partials, (block + 1) * rows / partials, hidden);
    }
  });
  at::parallel_for(0, hidden, kGrainElements / partials + 1, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      float total = 0.0f;
      for (int64_t block = 0; block < partials; ++block) {
        total += params.dweight_workspace[block * hidden + j];
      }
      dweight[j] = total;
    }
  });
}

void rotary_cpu(const RotaryParams& params) {
  check_params(params);
  check_cpu_dtype(params.dtype, "rotary_cpu");
  const int64_t head_dim = params.head_dim;
  at::parallel_for(0, params.tokens, grain_rows(params.heads * head_dim), [&](int64_t begin, int64_t end) {
    rotate_tokens(static_cast<const float*>(params.in), params.positions, static_cast<float*>(params.out),
                  params.inv_freq, params.attention_scaling, params.inverse ? -1.0f : 1.0f, begin, end,
                  params.heads, head_dim);
  });
}

void swiglu_forward_cpu(const SwigluParams& params) {
  check_params(params);
  check_cpu_dtype(params.dtype, "swiglu_forward_cpu");
  at::parallel_for(0, params.elements, kGrainElements, [&](int64_t begin, int64_t end) {
    swiglu_forward_range(static_cast<const float*>(params.gate), static_cast<const float*>(params.up),
                         static_cast<float*>(params.out), begin, end);
  });
}

void swiglu_backward_cpu(const SwigluBackwardParams& params) {
  check_params(params);
  check_cpu_dtype(params.dtype, "swiglu_backward_cpu");
  at::parallel_for(0, params.elements, kGrainElements, [&](int64_t begin, int64_t end) {
    swiglu_backward_range(static_cast<const float*>(params.gate), static_cast<const float*>(params.up),
                          static_cast<const float*>(params.dout), static_cast<float*>(params.dgate),
                          static_cast<float*>(params.dup), begin, end);
  });
}

}  // namespace chunkflow::kernels
