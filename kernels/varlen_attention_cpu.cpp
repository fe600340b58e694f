// CPU path of variable-length attention with a per-segment K/V prefix: check_params and the fp32
// forward/backward launchers. Each query tile walks only the keys its last row can see, in key
// blocks with an online softmax, so temporaries stay tile x block floats for any prefix length.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/error.h"
#include "kernels/cpu_simd.h"
#include "kernels/varlen_attention.h"

namespace chunkflow::kernels {
namespace {

// 128 query rows x 512 keys = 256 KiB per score block: large enough for BLAS to run near peak,
// small enough that the two blocks a backward worker holds stay in L2.
constexpr int64_t kQueryTileRows = 128;
constexpr int64_t kKeyBlockCols = 512;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

void check_not_null(const void* pointer, const char* op, const char* name) {
  CF_CHECK(pointer != nullptr, op, ": params.", name, " must not be null");
}

void check_cu_seqlens(const char* op, const char* name, const int32_t* cu_seqlens, int segments,
                      const char* max_name, int max_seqlen) {
  CF_CHECK(cu_seqlens[0] == 0, op, ": ", name, "[0] must be 0 (offsets start at the first row), got ",
           cu_seqlens[0]);
  for (int b = 0; b < segments; ++b) {
    const int64_t length = int64_t{cu_seqlens[b + 1]} - cu_seqlens[b];
    CF_CHECK(length >= 0, op, ": ", name, " must be non-decreasing, got ", name, "[", b, "] = ",
             cu_seqlens[b], " > ", name, "[", b + 1, "] = ", cu_seqlens[b + 1]);
    CF_CHECK(length <= max_seqlen, op, ": segment ", b, " has ", length, " rows (", name, "[", b + 1,
             "] - ", name, "[", b, "]) but ", max_name, " = ", max_seqlen,
             "; every segment length must be <= ", max_name);
  }
}

template <typename Params>
void check_shape_params(const Params& params, const char* op, OffsetsIn offsets) {
  CF_CHECK(params.segments >= 0, op, ": segments must be >= 0, got ", params.segments);
  CF_CHECK(params.heads > 0, op, ": heads must be > 0, got ", params.heads);
  CF_CHECK(params.kv_heads > 0, op, ": kv_heads must be > 0, got ", params.kv_heads);
  CF_CHECK(params.heads % params.kv_heads == 0, op,
           ": heads must be a multiple of kv_heads (GQA groups of equal size), got heads = ",
           params.heads, ", kv_heads = ", params.kv_heads);
  CF_CHECK(params.head_dim > 0, op, ": head_dim must be > 0, got ", params.head_dim);
  CF_CHECK(params.max_seqlen_q >= 0, op, ": max_seqlen_q must be >= 0, got ", params.max_seqlen_q);
  CF_CHECK(params.max_seqlen_k >= 0, op, ": max_seqlen_k must be >= 0, got ", params.max_seqlen_k);
  CF_CHECK(std::isfinite(params.softmax_scale), op, ": softmax_scale must be finite, got ",
           params.softmax_scale);
  const int dtype = static_cast<int>(params.dtype);
  CF_CHECK(dtype >= 0 && dtype <= static_cast<int>(ScalarType::kFloat16), op,
           ": dtype must be kFloat32, kBFloat16 or kFloat16, got ScalarType(", dtype, ")");
  check_not_null(params.cu_seqlens_q, op, "cu_seqlens_q");
  check_not_null(params.cu_seqlens_k, op, "cu_seqlens_k");
  // Device offsets cannot be read here; the adapter checks its host copy before copying.
  if (offsets == OffsetsIn::kDeviceMemory) return;
  check_cu_seqlens(op, "cu_seqlens_q", params.cu_seqlens_q, params.segments, "max_seqlen_q",
                   params.max_seqlen_q);
  check_cu_seqlens(op, "cu_seqlens_k", params.cu_seqlens_k, params.segments, "max_seqlen_k",
                   params.max_seqlen_k);
}

void check_cpu_dtype(ScalarType dtype, const char* op) {
  CF_CHECK(dtype == ScalarType::kFloat32, op, ": the CPU path takes float32, got ",
           scalar_type_name(dtype), "; convert q/k/v (and dout) to float32 or use the CUDA path");
}

// Query rows [begin, begin + rows) of one segment and its key rows, segment-relative.
struct Segment {
  int64_t q_begin = 0, sq = 0, k_begin = 0, sk = 0;
  bool causal = true;

  // Keys [0, visible_keys(i)) are what segment-relative query row i may attend (bottom-right
  // aligned causal rule j <= i + sk - sq), clamped to [0, sk].
  int64_t visible_keys(int64_t row) const {
    if (!causal) return sk;
    return std::clamp<int64_t>(row + sk - sq + 1, 0, sk);
  }
};

template <typename Params>
Segment segment_of(const Params& params, int64_t b) {
  Segment segment;
  segment.q_begin = params.cu_seqlens_q[b];
  segment.sq = int64_t{params.cu_seqlens_q[b + 1]} - segment.q_begin;
  segment.k_begin = params.cu_seqlens_k[b];
  segment.sk = int64_t{params.cu_seqlens_k[b + 1]} - segment.k_begin;
  segment.causal = params.causal;
  return segment;
}

// [rows, head_dim] view of head `head` of a [tokens, tensor_heads, head_dim] fp32 buffer,
// starting at token `first_row`. Row stride tensor_heads * head_dim, which BLAS takes as lda.
at::Tensor head_rows(const void* base, int64_t first_row, int64_t rows, int64_t head,
                     int64_t tensor_heads, int64_t head_dim) {
  // from_blob wants a mutable pointer; views of inputs are only ever read.
  float* data = const_cast<float*>(static_cast<const float*>(base)) +
                (first_row * tensor_heads + head) * head_dim;
  return at::from_blob(data, {rows, head_dim}, {tensor_heads * head_dim, 1},
                       at::TensorOptions().dtype(at::kFloat));
}

at::Tensor block_view(float* data, int64_t rows, int64_t cols) {
  return at::from_blob(data, {rows, cols}, at::TensorOptions().dtype(at::kFloat));
}

// Forward work items are listed tile by tile in causal order (cheap first) and walked zig-zag
// (first, last, second, second-to-last, ...), so the contiguous range parallel_for hands each
// thread mixes cheap early tiles with expensive late ones.
int64_t zigzag(int64_t index, int64_t count) {
  return index % 2 == 0 ? index / 2 : count - 1 - index / 2;
}

struct ForwardTile {
  int64_t segment = 0, kv_head = 0, row_begin = 0, rows = 0;
};

// Per-worker scratch of the forward, sized for one query tile x one key block.
struct ForwardWorkspace {
  explicit ForwardWorkspace(int64_t head_dim)
      : scores(kQueryTileRows * kKeyBlockCols), acc(kQueryTileRows * head_dim),
        row_max(kQueryTileRows), row_sum(kQueryTileRows), rescale(kQueryTileRows) {}

  std::vector<float> scores;   // [rows, cols] scaled scores, then probabilities of the block
  std::vector<float> acc;      // [rows, head_dim] unnormalised output
  std::vector<float> row_max;  // [rows] running max of the scaled scores
  std::vector<float> row_sum;  // [rows] running sum of exp(score - row_max)
  std::vector<float> rescale;  // [rows] exp(old max - new max) of the current block
};

// One query head over one query tile: online softmax over key blocks, then out and lse.
void forward_tile(const VarlenAttentionParams& params, const Segment& segment, int64_t head,
                  int64_t kv_head, int64_t row_begin, int64_t rows, int64_t total_q,
                  ForwardWorkspace& workspace) {
  std::vector<float>& scores = workspace.scores;
  std::vector<float>& acc = workspace.acc;
  std::vector<float>& row_max = workspace.row_max;
  std::vector<float>& row_sum = workspace.row_sum;
  std::vector<float>& rescale = workspace.rescale;
  const int64_t head_dim = params.head_dim;
  const float scale = params.softmax_scale;
  float* out = static_cast<float*>(params.out);
  float* lse = params.lse + head * total_q + segment.q_begin + row_begin;

  std::fill(acc.begin(), acc.begin() + rows * head_dim, 0.0f);
  std::fill(row_max.begin(), row_max.begin() + rows, kNegInf);
  std::fill(row_sum.begin(), row_sum.begin() + rows, 0.0f);

  const int64_t key_end = segment.visible_keys(row_begin + rows - 1);
  const at::Tensor q = head_rows(params.q, segment.q_begin + row_begin, rows, head, params.heads,
                                 head_dim);
  at::Tensor acc_view = block_view(acc.data(), rows, head_dim);
  for (int64_t key_begin = 0; key_begin < key_end; key_begin += kKeyBlockCols) {
    const int64_t cols = std::min(kKeyBlockCols, key_end - key_begin);
    const at::Tensor k = head_rows(params.k, segment.k_begin + key_begin, cols, kv_head,
                                   params.kv_heads, head_dim);
    const at::Tensor v = head_rows(params.v, segment.k_begin + key_begin, cols, kv_head,
                                   params.kv_heads, head_dim);
    at::Tensor block = block_view(scores.data(), rows, cols);
    at::mm_out(block, q, k.t());

    for (int64_t i = 0; i < rows; ++i) {
      float* s = scores.data() + i * cols;
      const int64_t visible = std::clamp<int64_t>(
          segment.visible_keys(row_begin + i) - key_begin, 0, cols);
      float block_max = kNegInf;
      for (int64_t j = 0; j < visible; ++j) {
        s[j] *= scale;
        block_max = std::max(block_max, s[j]);
      }
      std::fill(s + visible, s + cols, kNegInf);
      const float new_max = std::max(row_max[i], block_max);
      if (new_max == kNegInf) {
        // No key seen yet: everything stays -inf, exp gives 0 and acc/sum stay 0.
        rescale[i] = 1.0f;
        continue;
      }
      rescale[i] = std::exp(row_max[i] - new_max);  // exp(-inf) = 0 on the first visible block
      row_max[i] = new_max;
      for (int64_t j = 0; j < visible; ++j) s[j] -= new_max;
    }
    cpu_simd::exp_in_place(scores.data(), rows * cols);  // not at::exp_: see cpu_simd.h
    for (int64_t i = 0; i < rows; ++i) {
      const float* p = scores.data() + i * cols;
      float sum = 0.0f;
      for (int64_t j = 0; j < cols; ++j) sum += p[j];
      row_sum[i] = row_sum[i] * rescale[i] + sum;
      float* a = acc.data() + i * head_dim;
      for (int64_t d = 0; d < head_dim; ++d) a[d] *= rescale[i];
    }
    acc_view.addmm_(block, v);
  }

  for (int64_t i = 0; i < rows; ++i) {
    float* o = out + ((segment.q_begin + row_begin + i) * params.heads + head) * head_dim;
    if (row_sum[i] > 0.0f) {
      const float inverse = 1.0f / row_sum[i];
      const float* a = acc.data() + i * head_dim;
      for (int64_t d = 0; d < head_dim; ++d) o[d] = a[d] * inverse;
      lse[i] = row_max[i] + std::log(row_sum[i]);
    } else {
      std::fill(o, o + head_dim, 0.0f);
      lse[i] = kNegInf;
    }
  }
}

// All query heads of one kv head over one segment: dk/dv rows of the pair belong to this call
// alone, so workers never write the same memory.
void backward_segment_kv_head(const VarlenAttentionBackwardParams& params, const Segment& segment,
                              int64_t kv_head, int64_t total_q) {
  const int64_t head_dim = params.head_dim;
  const int64_t group = params.heads / params.kv_heads;
  const float scale = params.softmax_scale;

  at::Tensor dk_all = head_rows(params.dk, segment.k_begin, segment.sk, kv_head, params.kv_heads,
                                head_dim);
  at::Tensor dv_all = head_rows(params.dv, segment.k_begin, segment.sk, kv_head, params.kv_heads,
                                head_dim);
  dk_all.zero_();
  dv_all.zero_();

  std::vector<float> probs(kQueryTileRows * kKeyBlockCols);
  std::vector<float> dprobs(kQueryTileRows * kKeyBlockCols);
  std::vector<float> out_dot_dout(kQueryTileRows);
  const float* out = static_cast<const float*>(params.out);
  const float* dout = static_cast<const float*>(params.dout);

  for (int64_t head = kv_head * group; head < (kv_head + 1) * group; ++head) {
    for (int64_t row_begin = 0; row_begin < segment.sq; row_begin += kQueryTileRows) {
      const int64_t rows = std::min(kQueryTileRows, segment.sq - row_begin);
      const int64_t first_row = segment.q_begin + row_begin;
      at::Tensor dq = head_rows(params.dq, first_row, rows, head, params.heads, head_dim);
      dq.zero_();
      const int64_t key_end = segment.visible_keys(row_begin + rows - 1);
      if (key_end == 0) continue;

      const at::Tensor q = head_rows(params.q, first_row, rows, head, params.heads, head_dim);
      const at::Tensor dout_rows = head_rows(params.dout, first_row, rows, head, params.heads,
                                             head_dim);
      const float* lse = params.lse + head * total_q + first_row;
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t offset = ((first_row + i) * params.heads + head) * head_dim;
        float dot = 0.0f;
        for (int64_t d = 0; d < head_dim; ++d) dot += out[offset + d] * dout[offset + d];
        out_dot_dout[i] = dot;
      }

      for (int64_t key_begin = 0; key_begin < key_end; key_begin += kKeyBlockCols) {
        const int64_t cols = std::min(kKeyBlockCols, key_end - key_begin);
        const at::Tensor k = head_rows(params.k, segment.k_begin + key_begin, cols, kv_head,
                                       params.kv_heads, head_dim);
        const at::Tensor v = head_rows(params.v, segment.k_begin + key_begin, cols, kv_head,
                                       params.kv_heads, head_dim);
        at::Tensor p_block = block_view(probs.data(), rows, cols);
        at::Tensor dp_block = block_view(dprobs.data(), rows, cols);

        // P = exp(S * scale - lse) recomputed from the forward's lse; masked entries -> 0.
        at::mm_out(p_block, q, k.t());
        for (int64_t i = 0; i < rows; ++i) {
          float* s = probs.data() + i * cols;
          const int64_t visible = std::clamp<int64_t>(
              segment.visible_keys(row_begin + i) - key_begin, 0, cols);
          for (int64_t j = 0; j < visible; ++j) s[j] = s[j] * scale - lse[i];
          std::fill(s + visible, s + cols, kNegInf);
        }
        cpu_simd::exp_in_place(probs.data(), rows * cols);

        at::mm_out(dp_block, dout_rows, v.t());
        // dS = P * (dP - rowsum(dout * out)), with the softmax scale folded in for dQ and dK.
        for (int64_t i = 0; i < rows; ++i) {
          const float* p = probs.data() + i * cols;
          float* ds = dprobs.data() + i * cols;
          const float dot = out_dot_dout[i];
          for (int64_t j = 0; j < cols; ++j) ds[j] = scale * p[j] * (ds[j] - dot);
        }

        dv_all.narrow(0, key_begin, cols).addmm_(p_block.t(), dout_rows);
        dq.addmm_(dp_block, k);
        dk_all.narrow(0, key_begin, cols).addmm_(dp_block.t(), q);
      }
    }
  }
}

}  // namespace

void check_params(const VarlenAttentionParams& params, OffsetsIn offsets) {
  const char* op = "varlen_attention_forward";
  check_not_null(params.q, op, "q");
  check_not_null(params.k, op, "k");
  check_not_null(params.v, op, "v");
  check_not_null(params.out, op, "out");
  check_not_null(params.lse, op, "lse");
  check_shape_params(params, op, offsets);
}

void check_params(const VarlenAttentionBackwardParams& params, OffsetsIn offsets) {
  const char* op = "varlen_attention_backward";
  check_not_null(params.q, op, "q");
  check_not_null(params.k, op, "k");
  check_not_null(params.v, op, "v");
  check_not_null(params.out, op, "out");
  check_not_null(params.lse, op, "lse");
  check_not_null(params.dout, op, "dout");
  check_not_null(params.dq, op, "dq");
  check_not_null(params.dk, op, "dk");
  check_not_null(params.dv, op, "dv");
  check_shape_params(params, op, offsets);
}

void varlen_attention_forward_cpu(const VarlenAttentionParams& params) {
  check_params(params);
  check_cpu_dtype(params.dtype, "varlen_attention_forward_cpu");
  const int64_t total_q = params.cu_seqlens_q[params.segments];
  const int64_t group = params.heads / params.kv_heads;

  std::vector<ForwardTile> tiles;
  for (int64_t b = 0; b < params.segments; ++b) {
    const Segment segment = segment_of(params, b);
    for (int64_t kv_head = 0; kv_head < params.kv_heads; ++kv_head) {
      for (int64_t row_begin = 0; row_begin < segment.sq; row_begin += kQueryTileRows) {
        tiles.push_back({b, kv_head, row_begin, std::min(kQueryTileRows, segment.sq - row_begin)});
      }
    }
  }
  const auto count = static_cast<int64_t>(tiles.size());
  // Runs in parallel only where this file is compiled with OpenMP, as LibTorch is; without it
  // at::parallel_for runs inline and each small GEMM below spreads over MKL's own threads.
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
    ForwardWorkspace workspace(params.head_dim);
    for (int64_t index = begin; index < end; ++index) {
      const ForwardTile& tile = tiles[zigzag(index, count)];
      const Segment segment = segment_of(params, tile.segment);
      for (int64_t head = tile.kv_head * group; head < (tile.kv_head + 1) * group; ++head) {
        forward_tile(params, segment, head, tile.kv_head, tile.row_begin, tile.rows, total_q,
                     workspace);
      }
    }
  });
}

void varlen_attention_backward_cpu(const VarlenAttentionBackwardParams& params) {
  check_params(params);
  check_cpu_dtype(params.dtype, "varlen_attention_backward_cpu");
  const int64_t total_q = params.cu_seqlens_q[params.segments];
  const int64_t pairs = int64_t{params.segments} * params.kv_heads;
  // One worker per (segment, kv head): it alone writes that pair's dk/dv rows.
  at::parallel_for(0, pairs, 1, [&](int64_t begin, int64_t end) {
    for (int64_t index = begin; index < end; ++index) {
      const Segment segment = segment_of(params, index / params.kv_heads);
      backward_segment_kv_head(params, segment, index % params.kv_heads, total_q);
    }
  });
}

}  // namespace chunkflow::kernels
