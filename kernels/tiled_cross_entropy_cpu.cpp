// CPU path of the tiled cross-entropy (kernels/tiled_cross_entropy.h): fp32 only; ATen supplies
// the BLAS calls, kernels/cpu_simd.h the exp and row reductions, and the one fp32 logits buffer
// is [tile_tokens, vocab].
#include "kernels/tiled_cross_entropy.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "kernels/cpu_simd.h"

namespace chunkflow::kernels {
namespace {

using cpu_simd::exp_simd;
using cpu_simd::grain_rows;

// lse[row] = log sum_j exp(logits[row, j]) for rows [begin, end): the row's maximum, then
// exp(logit - max) summed in fixed lanes (our exp, not torch's exp_: see cpu_simd.h).
CF_SIMD_CLONES void log_sum_exp_rows(const float* logits, int64_t vocab, int64_t begin, int64_t end, float* lse) {
  for (int64_t row = begin; row < end; ++row) {
    const float* x = logits + row * vocab;
    const float max = cpu_simd::lane_max(vocab, [&](int64_t j) { return x[j]; });
    const float sum = cpu_simd::lane_sum(vocab, [&](int64_t j) { return exp_simd(x[j] - max); });
    lse[row] = max + std::log(sum);
  }
}

// logits[row, j] = exp(logits[row, j] - lse[row]) (the softmax) for rows [begin, end).
CF_SIMD_CLONES void softmax_rows(float* logits, const float* lse, int64_t vocab, int64_t begin, int64_t end) {
  for (int64_t row = begin; row < end; ++row) {
    float* x = logits + row * vocab;
    const float shift = lse[row];
#pragma omp simd
    for (int64_t j = 0; j < vocab; ++j) x[j] = exp_simd(x[j] - shift);
  }
}

// Vocabulary entries summed by one BLAS accumulation in the backward (see vocab_blocked_mm).
constexpr int64_t kVocabBlock = 512;

// Shared by both directions: everything but the pointers that differ.
void check_common(const char* what, const void* hidden, const void* weight, const int64_t* labels,
                  int64_t tokens, int64_t hidden_size, int64_t vocab, int64_t tile_tokens) {
  CF_CHECK(tokens >= 0, what, ": tokens must be >= 0, got ", tokens);
  CF_CHECK(hidden_size > 0, what, ": hidden_size must be > 0, got ", hidden_size);
  CF_CHECK(vocab > 0, what, ": vocab must be > 0, got ", vocab);
  CF_CHECK(tile_tokens > 0, what, ": tile_tokens must be > 0, got ", tile_tokens);
  CF_CHECK(weight != nullptr, what, ": weight [vocab, hidden_size] must not be null");
  if (tokens == 0) return;
  CF_CHECK(hidden != nullptr, what, ": hidden [tokens, hidden_size] must not be null (tokens = ",
           tokens, ")");
  CF_CHECK(labels != nullptr, what, ": labels [tokens] must not be null (tokens = ", tokens, ")");
  for (int64_t token = 0; token < tokens; ++token) {
    const int64_t label = labels[token];
    CF_CHECK(label == kIgnoreIndex || (label >= 0 && label < vocab), what, ": labels[", token,
             "] = ", label, " is outside [0, vocab = ", vocab, ") and is not the ignore index ",
             kIgnoreIndex);
  }
}

void check_cpu_dtype(const char* what, ScalarType dtype) {
  CF_CHECK(dtype == ScalarType::kFloat32, what, ": the CPU path supports float32 only, got ",
           scalar_type_name(dtype), "; convert hidden and weight to float32 or use the CUDA path");
}

// Non-owning fp32 views of caller memory; ATen never frees or resizes these.
at::Tensor view_fp32(const void* data, at::IntArrayRef sizes) {
  return at::from_blob(const_cast<void*>(data), sizes, at::TensorOptions().dtype(at::kFloat));
}

// a [rows, vocab] @ b [vocab, cols] -> [rows, cols], summing the vocabulary in blocks of
// kVocabBlock. For a few rows BLAS accumulates the whole vocabulary in one fp32 running sum, a
// relative error of 1e-5 at vocab 32000 and 6e-5 at 152064 (against 5e-7 blocked) that would
// make the result depend on how tokens fall into tiles. One bmm covers many blocks; its
// [blocks, rows, cols] partials stay under a quarter of a's size (or one block's worth).
at::Tensor vocab_blocked_mm(const at::Tensor& a, const at::Tensor& b) {
  const int64_t rows = a.size(0), vocab = a.size(1), cols = b.size(1);
  const int64_t full_blocks = vocab / kVocabBlock;
  const int64_t blocks_per_call =
      std::clamp<int64_t>(vocab / (4 * cols), 1, std::max<int64_t>(full_blocks, 1));
  at::Tensor result = at::zeros({rows, cols}, at::kFloat);
  for (int64_t block = 0; block < full_blocks; block += blocks_per_call) {
    const int64_t blocks = std::min(blocks_per_call, full_blocks - block);
    const int64_t first = block * kVocabBlock, width = blocks * kVocabBlock;
    // [blocks, rows, kVocabBlock] as a strided view of a (no copy), and [blocks, kVocabBlock, cols].
    const at::Tensor a_blocks =
        a.narrow(1, first, width).view({rows, blocks, kVocabBlock}).transpose(0, 1);
    const at::Tensor b_blocks = b.narrow(0, first, width).view({blocks, kVocabBlock, cols});
    result.add_(at::bmm(a_blocks, b_blocks).sum(0));
  }
  const int64_t tail = vocab - full_blocks * kVocabBlock;
  if (tail > 0) {
    const int64_t first = full_blocks * kVocabBlock;
    result.add_(at::mm(a.narrow(1, first, tail), b.narrow(0, first, tail)));
  }
  return result;
}

bool tile_has_label(const int64_t* labels, int64_t count) {
  return std::any_of(labels, labels + count, [](int64_t label) { return label != kIgnoreIndex; });
}

}  // namespace

void check_params(const TiledCrossEntropyParams& params) {
  constexpr const char* kWhat = "tiled cross-entropy forward";
  check_common(kWhat, params.hidden, params.weight, params.labels, params.tokens,
               params.hidden_size, params.vocab, params.tile_tokens);
  CF_CHECK(params.loss_sum != nullptr, kWhat, ": loss_sum [1] must not be null");
  CF_CHECK(params.tokens == 0 || params.lse != nullptr, kWhat,
           ": lse [tokens] must not be null (tokens = ", params.tokens, ")");
}

void check_params(const TiledCrossEntropyBackwardParams& params) {
  constexpr const char* kWhat = "tiled cross-entropy backward";
  check_common(kWhat, params.hidden, params.weight, params.labels, params.tokens,
               params.hidden_size, params.vocab, params.tile_tokens);
  CF_CHECK(params.d_weight != nullptr, kWhat, ": d_weight [vocab, hidden_size] must not be null");
  if (params.tokens == 0) return;
  CF_CHECK(params.lse != nullptr, kWhat, ": lse [tokens] (from the forward) must not be null");
  CF_CHECK(params.d_hidden != nullptr, kWhat,
           ": d_hidden [tokens, hidden_size] must not be null (tokens = ", params.tokens, ")");
}

void tiled_cross_entropy_forward_cpu(const TiledCrossEntropyParams& params) {
  check_params(params);
  check_cpu_dtype("tiled_cross_entropy_forward_cpu", params.dtype);
  const int64_t tokens = params.tokens, hidden_size = params.hidden_size, vocab = params.vocab;
  *params.loss_sum = 0.0f;
  if (tokens == 0) return;

  const at::Tensor hidden = view_fp32(params.hidden, {tokens, hidden_size});
  const at::Tensor weight_t = view_fp32(params.weight, {vocab, hidden_size}).t();
  const int64_t tile_tokens = std::min(params.tile_tokens, tokens);
  at::Tensor logits_buffer = at::empty({tile_tokens, vocab}, at::kFloat);  // the only fp32 logits
  // Accumulated in double, so the total's rounding does not grow with the number of tokens.
  double loss_sum = 0.0;

  for (int64_t first = 0; first < tokens; first += tile_tokens) {
    const int64_t count = std::min(tile_tokens, tokens - first);
    const int64_t* labels = params.labels + first;
    float* lse = params.lse + first;
    if (!tile_has_label(labels, count)) {
      std::fill(lse, lse + count, 0.0f);
      continue;
    }
    at::Tensor logits = logits_buffer.narrow(0, 0, count);  // [count, vocab]
    at::mm_out(logits, hidden.narrow(0, first, count), weight_t);

    const float* logits_data = logits.const_data_ptr<float>();
    at::parallel_for(0, count, grain_rows(vocab), [&](int64_t begin, int64_t end) {
      log_sum_exp_rows(logits_data, vocab, begin, end, lse);
    });
    for (int64_t row = 0; row < count; ++row) {
      if (labels[row] == kIgnoreIndex) {
        lse[row] = 0.0f;
        continue;
      }
      loss_sum += static_cast<double>(lse[row]) - static_cast<double>(logits_data[row * vocab + labels[row]]);
    }
  }
  *params.loss_sum = static_cast<float>(loss_sum);
}

void tiled_cross_entropy_backward_cpu(const TiledCrossEntropyBackwardParams& params) {
  check_params(params);
  check_cpu_dtype("tiled_cross_entropy_backward_cpu", params.dtype);
  const int64_t tokens = params.tokens, hidden_size = params.hidden_size, vocab = params.vocab;
  at::Tensor d_weight = view_fp32(params.d_weight, {vocab, hidden_size});
  d_weight.zero_();
  if (tokens == 0) return;

  const at::Tensor hidden = view_fp32(params.hidden, {tokens, hidden_size});
  const at::Tensor weight = view_fp32(params.weight, {vocab, hidden_size});
  const at::Tensor weight_t = weight.t();
  at::Tensor d_hidden = view_fp32(params.d_hidden, {tokens, hidden_size});
  const int64_t tile_tokens = std::min(params.tile_tokens, tokens);
  at::Tensor grad_logits_buffer = at::empty({tile_tokens, vocab}, at::kFloat);
  const float grad_loss = params.grad_loss;

  for (int64_t first = 0; first < tokens; first += tile_tokens) {
    const int64_t count = std::min(tile_tokens, tokens - first);
    const int64_t* labels = params.labels + first;
    at::Tensor d_hidden_tile = d_hidden.narrow(0, first, count);
    if (!tile_has_label(labels, count)) {
      d_hidden_tile.zero_();
      continue;
    }
    const at::Tensor hidden_tile = hidden.narrow(0, first, count);
    at::Tensor grad_logits = grad_logits_buffer.narrow(0, 0, count);  // [count, vocab]
    at::mm_out(grad_logits, hidden_tile, weight_t);
    // softmax - onehot(label); ignored rows carry lse = 0 and are zeroed here. grad_loss scales
    // the two [*, hidden_size] products below instead, which saves a pass over the tile.
    float* grad_data = grad_logits.mutable_data_ptr<float>();
    at::parallel_for(0, count, grain_rows(vocab), [&](int64_t begin, int64_t end) {
      softmax_rows(grad_data, params.lse + first, vocab, begin, end);
    });
    for (int64_t row = 0; row < count; ++row) {
      float* grad_row = grad_data + row * vocab;
      if (labels[row] == kIgnoreIndex) {
        std::memset(grad_row, 0, static_cast<size_t>(vocab) * sizeof(float));
      } else {
        grad_row[labels[row]] -= 1.0f;
      }
    }
    // d_hidden_tile = grad_loss * grad_logits @ weight        [count, hidden_size]
    d_hidden_tile.copy_(vocab_blocked_mm(grad_logits, weight)).mul_(grad_loss);
    // d_weight += grad_loss * grad_logits^T @ hidden_tile     [vocab, hidden_size]
    d_weight.addmm_(grad_logits.t(), hidden_tile, /*beta=*/1, grad_loss);
  }
}

}  // namespace chunkflow::kernels
