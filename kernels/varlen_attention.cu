// CUDA path of variable-length attention with a K/V prefix (contract: varlen_attention.h), in the
// FlashAttention-2 manner: a block of 4 warps owns 64 rows, each warp 16 of them; tile products
// run on tensor cores through mma.sync.m16n8k16 (bf16/fp16 in, fp32 accumulate) whose register
// layouts the PTX ISA fixes, so the online softmax works on the accumulators in registers and the
// probabilities feed the next product without a trip through memory.
//
// Fragment layouts used below (PTX ISA, "Matrix Fragments for mma.m16n8k16"), with
// group = lane / 4 and quad_lane = lane % 4:
//   A (16 x 16, row-major)  reg0: (group,     2q..2q+1)   reg1: (group + 8, 2q..2q+1)
//                           reg2: (group, 2q+8..2q+9)     reg3: (group + 8, 2q+8..2q+9)
//   B (16 x 8, k x n)       reg0: (k = 2q..2q+1, n = group)  reg1: (k = 2q+8..2q+9, n = group)
//   C (16 x 8, fp32)        c0, c1: (group, 2q..2q+1)     c2, c3: (group + 8, 2q..2q+1)
// (q = quad_lane; the lower half of each 32-bit register holds the lower column/k index.) Two
// C tiles side by side (n 0..15) are therefore exactly one A fragment: the softmax probabilities
// become the A operand of P @ V as they are.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <set>
#include <tuple>

#include "core/error.h"
#include "kernels/cuda_check.cuh"
#include "kernels/varlen_attention.h"

namespace chunkflow::kernels {
namespace {

constexpr int kTileRows = 64;  // queries per forward block, keys per backward block
constexpr int kTileCols = 64;  // keys per forward step, queries per backward step
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRowsPerWarp = 16;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Shared-memory tiles are [64][head_dim + 8]: the 8-element pad shifts consecutive rows by four
// banks, so the 8 rows x 4 columns a fragment load touches fall in 32 different banks.
template <int kHeadDim>
struct Pitch {
  static constexpr int value = kHeadDim + 8;
};
constexpr int kScoresPitch = kTileCols + 8;

__device__ __forceinline__ uint16_t bits_of(__nv_bfloat16 value) {
  uint16_t bits;
  memcpy(&bits, &value, sizeof(bits));
  return bits;
}
__device__ __forceinline__ uint16_t bits_of(__half value) {
  uint16_t bits;
  memcpy(&bits, &value, sizeof(bits));
  return bits;
}

template <typename T>
__device__ __forceinline__ uint32_t pack_pair(T low, T high) {
  return static_cast<uint32_t>(bits_of(low)) | (static_cast<uint32_t>(bits_of(high)) << 16);
}

template <typename T>
__device__ __forceinline__ uint32_t pack_floats(float low, float high) {
  return pack_pair(from_float<T>(low), from_float<T>(high));
}

// Two adjacent elements (even column) of a shared tile as one register.
template <typename T>
__device__ __forceinline__ uint32_t load_pair(const T* tile, int pitch, int row, int col) {
  return *reinterpret_cast<const uint32_t*>(tile + row * pitch + col);
}

// Elements (row, col) and (row + 1, col): a k-pair of a B operand read down a column.
template <typename T>
__device__ __forceinline__ uint32_t load_column_pair(const T* tile, int pitch, int row, int col) {
  return pack_pair(tile[row * pitch + col], tile[(row + 1) * pitch + col]);
}

template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1);

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4],
                                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&c)[4], const uint32_t (&a)[4],
                                                  uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Copies rows [first_row, first_row + valid_rows) of one head (row stride `row_stride` elements)
// into a [64][pitch] shared tile with 16-byte loads; rows past valid_rows are zero, so products
// over them add nothing and need no branch.
template <typename T, int kHeadDim>
__device__ __forceinline__ void load_tile(T* tile, const T* head_base, int64_t first_row,
                                          int valid_rows, int64_t row_stride) {
  constexpr int kVectorsPerRow = kHeadDim / 8;
  constexpr int kPitch = Pitch<kHeadDim>::value;
  for (int index = threadIdx.x; index < kTileRows * kVectorsPerRow; index += kThreads) {
    const int row = index / kVectorsPerRow;
    const int vector = index % kVectorsPerRow;
    uint4 value = make_uint4(0, 0, 0, 0);
    if (row < valid_rows) {
      value = *reinterpret_cast<const uint4*>(head_base + (first_row + row) * row_stride +
                                              vector * 8);
    }
    *reinterpret_cast<uint4*>(tile + row * kPitch + vector * 8) = value;
  }
}

// A fragment (16 rows from `first_row`, 16 columns from `col`) of a row-major shared tile.
template <typename T>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* tile, int pitch, int first_row,
                                       int col, int group, int quad_lane) {
  a[0] = load_pair(tile, pitch, first_row + group, col + 2 * quad_lane);
  a[1] = load_pair(tile, pitch, first_row + group + 8, col + 2 * quad_lane);
  a[2] = load_pair(tile, pitch, first_row + group, col + 2 * quad_lane + 8);
  a[3] = load_pair(tile, pitch, first_row + group + 8, col + 2 * quad_lane + 8);
}

__device__ __forceinline__ float quad_max(float value) {
  value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, 1));
  return fmaxf(value, __shfl_xor_sync(0xffffffffu, value, 2));
}
__device__ __forceinline__ float quad_sum(float value) {
  value += __shfl_xor_sync(0xffffffffu, value, 1);
  return value + __shfl_xor_sync(0xffffffffu, value, 2);
}

struct SegmentBounds {
  int q_begin, sq, k_begin, sk;
};

__device__ __forceinline__ SegmentBounds segment_bounds(const int32_t* cu_seqlens_q,
                                                        const int32_t* cu_seqlens_k, int segment) {
  SegmentBounds bounds;
  bounds.q_begin = cu_seqlens_q[segment];
  bounds.sq = cu_seqlens_q[segment + 1] - bounds.q_begin;
  bounds.k_begin = cu_seqlens_k[segment];
  bounds.sk = cu_seqlens_k[segment + 1] - bounds.k_begin;
  return bounds;
}

// Bottom-right causal rule of the contract: query row i of a segment sees key j iff
// j <= i + (sk - sq), and j < sk.
__device__ __forceinline__ bool visible(int query, int key, int sk, int diagonal_offset,
                                        bool causal) {
  return key < sk && (!causal || key <= query + diagonal_offset);
}

// ---------------------------------------------------------------------------------------------
// Forward. Grid (query tiles, segments, heads); block = 64 query rows of one head of one segment.
template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const VarlenAttentionParams params) {
  constexpr int kPitch = Pitch<kHeadDim>::value;
  constexpr int kDimTiles = kHeadDim / 8;    // n-tiles of 8 output columns
  constexpr int kDimSteps = kHeadDim / 16;   // k-steps of 16 over head_dim
  constexpr int kKeyTiles = kTileCols / 8;   // n-tiles of 8 keys in a score block
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  T* key_tile = reinterpret_cast<T*>(shared_bytes);
  T* value_tile = key_tile + kTileRows * kPitch;

  const int segment = blockIdx.y;
  const int head = blockIdx.z;
  const SegmentBounds bounds = segment_bounds(params.cu_seqlens_q, params.cu_seqlens_k, segment);
  // Later (costlier, under causal masking) tiles get the lower block indices: they start first.
  const int tile = static_cast<int>(gridDim.x) - 1 - static_cast<int>(blockIdx.x);
  const int q0 = tile * kTileRows;
  if (q0 >= bounds.sq) return;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane / 4, quad_lane = lane % 4;
  const int kv_head = head / (params.heads / params.kv_heads);
  const int diagonal_offset = bounds.sk - bounds.sq;
  const int64_t q_stride = int64_t{params.heads} * kHeadDim;
  const int64_t kv_stride = int64_t{params.kv_heads} * kHeadDim;
  const T* q = static_cast<const T*>(params.q) + head * kHeadDim;
  const T* k = static_cast<const T*>(params.k) + kv_head * kHeadDim;
  const T* v = static_cast<const T*>(params.v) + kv_head * kHeadDim;

  // This thread's two query rows (segment-relative): row_of[0] = group, row_of[1] = group + 8.
  const int warp_row0 = q0 + warp * kRowsPerWarp;
  const int rows[2] = {warp_row0 + group, warp_row0 + group + 8};

  // Q fragments straight from global memory into registers, held for the whole key loop.
  uint32_t q_frag[kDimSteps][4];
#pragma unroll
  for (int step = 0; step < kDimSteps; ++step) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {      // column offset 0 or 8 within the step
#pragma unroll
      for (int which = 0; which < 2; ++which) {  // row group or group + 8
        const int row = rows[which];
        uint32_t value = 0;
        if (row < bounds.sq) {
          value = *reinterpret_cast<const uint32_t*>(
              q + (int64_t{bounds.q_begin} + row) * q_stride + step * 16 + 2 * quad_lane +
              half * 8);
        }
        q_frag[step][half * 2 + which] = value;
      }
    }
  }

  float acc[kDimTiles][4];
#pragma unroll
  for (int tile_index = 0; tile_index < kDimTiles; ++tile_index)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[tile_index][i] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY};  // running max of scaled scores, log2 units
  float row_sum[2] = {0.0f, 0.0f};            // this thread's share of the running sum
  const float scale_log2 = params.softmax_scale * kLog2e;

  // Keys the block's last row can see; later key blocks are fully masked and skipped.
  const int last_row_end = min(q0 + kTileRows, bounds.sq);
  const int key_end = params.causal ? min(bounds.sk, last_row_end + diagonal_offset) : bounds.sk;

  for (int k0 = 0; k0 < key_end; k0 += kTileCols) {
    __syncthreads();  // the previous block's tiles are no longer read
    const int valid_keys = min(kTileCols, bounds.sk - k0);
    load_tile<T, kHeadDim>(key_tile, k, int64_t{bounds.k_begin} + k0, valid_keys, kv_stride);
    load_tile<T, kHeadDim>(value_tile, v, int64_t{bounds.k_begin} + k0, valid_keys, kv_stride);
    __syncthreads();

    float scores[kKeyTiles][4];
#pragma unroll
    for (int key_tile_index = 0; key_tile_index < kKeyTiles; ++key_tile_index) {
#pragma unroll
      for (int i = 0; i < 4; ++i) scores[key_tile_index][i] = 0.0f;
#pragma unroll
      for (int step = 0; step < kDimSteps; ++step) {
        const int key_row = key_tile_index * 8 + group;
        const uint32_t b0 = load_pair(key_tile, kPitch, key_row, step * 16 + 2 * quad_lane);
        const uint32_t b1 = load_pair(key_tile, kPitch, key_row, step * 16 + 2 * quad_lane + 8);
        mma_16816<T>(scores[key_tile_index], q_frag[step], b0, b1);
      }
    }

    // Mask, then the online-softmax update per row.
    float block_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int key_tile_index = 0; key_tile_index < kKeyTiles; ++key_tile_index) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int key = k0 + key_tile_index * 8 + 2 * quad_lane + (i & 1);
        const int which = i / 2;
        const float scaled = visible(rows[which], key, bounds.sk, diagonal_offset, params.causal)
                                 ? scores[key_tile_index][i] * scale_log2
                                 : -INFINITY;
        scores[key_tile_index][i] = scaled;
        block_max[which] = fmaxf(block_max[which], scaled);
      }
    }
    float shift[2];
#pragma unroll
    for (int which = 0; which < 2; ++which) {
      const float new_max = fmaxf(row_max[which], quad_max(block_max[which]));
      // A row that has seen no key yet keeps max -inf; shift by 0 so exp2 gives 0, not NaN.
      shift[which] = new_max == -INFINITY ? 0.0f : new_max;
      const float correction = exp2f(row_max[which] - shift[which]);
      row_max[which] = new_max;
      row_sum[which] *= correction;
#pragma unroll
      for (int tile_index = 0; tile_index < kDimTiles; ++tile_index) {
        acc[tile_index][which * 2] *= correction;
        acc[tile_index][which * 2 + 1] *= correction;
      }
    }
#pragma unroll
    for (int key_tile_index = 0; key_tile_index < kKeyTiles; ++key_tile_index) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float probability = exp2f(scores[key_tile_index][i] - shift[i / 2]);
        scores[key_tile_index][i] = probability;
        row_sum[i / 2] += probability;
      }
    }

    // acc += P @ V: two score tiles form one A fragment (see the layout note at the top).
#pragma unroll
    for (int key_step = 0; key_step < kTileCols / 16; ++key_step) {
      const float(&left)[4] = scores[2 * key_step];
      const float(&right)[4] = scores[2 * key_step + 1];
      const uint32_t p_frag[4] = {pack_floats<T>(left[0], left[1]), pack_floats<T>(left[2], left[3]),
                                  pack_floats<T>(right[0], right[1]),
                                  pack_floats<T>(right[2], right[3])};
#pragma unroll
      for (int tile_index = 0; tile_index < kDimTiles; ++tile_index) {
        const int dim = tile_index * 8 + group;
        const int key_row = key_step * 16 + 2 * quad_lane;
        const uint32_t b0 = load_column_pair(value_tile, kPitch, key_row, dim);
        const uint32_t b1 = load_column_pair(value_tile, kPitch, key_row + 8, dim);
        mma_16816<T>(acc[tile_index], p_frag, b0, b1);
      }
    }
  }

  // Normalise and store; rows that saw no key write zeros and lse = -inf.
  T* out = static_cast<T*>(params.out) + head * kHeadDim;
  const int64_t total_q = int64_t{params.cu_seqlens_q[params.segments]};
#pragma unroll
  for (int which = 0; which < 2; ++which) {
    const int row = rows[which];
    const float sum = quad_sum(row_sum[which]);
    if (row >= bounds.sq) continue;
    const float inverse = sum > 0.0f ? 1.0f / sum : 0.0f;
    const int64_t token = int64_t{bounds.q_begin} + row;
#pragma unroll
    for (int tile_index = 0; tile_index < kDimTiles; ++tile_index) {
      const int dim = tile_index * 8 + 2 * quad_lane;
      *reinterpret_cast<uint32_t*>(out + token * q_stride + dim) =
          pack_floats<T>(acc[tile_index][which * 2] * inverse,
                         acc[tile_index][which * 2 + 1] * inverse);
    }
    if (quad_lane == 0) {
      params.lse[int64_t{head} * total_q + token] =
          sum > 0.0f ? row_max[which] * kLn2 + logf(sum) : -INFINITY;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward, step 1: softmax_d[h, t] = sum_d dout[t, h, d] * out[t, h, d] (fp32), and dq_accum
// zeroed. One warp per (token, head) row, grid-stride: the row count is read on the device.
template <typename T, int kHeadDim>
__global__ void prepare_backward_kernel(const VarlenAttentionBackwardParams params) {
  const int64_t total_q = params.cu_seqlens_q[params.segments];
  const int64_t rows = total_q * params.heads;
  const int lane = threadIdx.x % 32;
  const int64_t warps_in_grid = int64_t{gridDim.x} * (blockDim.x / 32);
  for (int64_t row = int64_t{blockIdx.x} * (blockDim.x / 32) + threadIdx.x / 32; row < rows;
       row += warps_in_grid) {
    const T* out_row = static_cast<const T*>(params.out) + row * kHeadDim;
    const T* dout_row = static_cast<const T*>(params.dout) + row * kHeadDim;
    float sum = 0.0f;
#pragma unroll
    for (int dim = lane; dim < kHeadDim; dim += 32) {
      sum += to_float(out_row[dim]) * to_float(dout_row[dim]);
      params.dq_accum[row * kHeadDim + dim] = 0.0f;
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (lane == 0) {
      const int64_t token = row / params.heads;
      const int64_t head = row % params.heads;
      params.softmax_d[head * total_q + token] = sum;
    }
  }
}

// Backward, step 2. Grid (key tiles, segments, kv heads); block = 64 keys of one K/V head of one
// segment, 16 per warp. It walks every query head of the GQA group and every query tile that can
// see its keys, accumulating dK and dV in registers (written once at the end, no atomics) and
// adding its dQ share to dq_accum with fp32 atomics. Products are taken transposed (keys as rows)
// so that P^T and dS^T come out of the accumulators already in A-operand layout.
template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const VarlenAttentionBackwardParams params) {
  constexpr int kPitch = Pitch<kHeadDim>::value;
  constexpr int kDimTiles = kHeadDim / 8;
  constexpr int kDimSteps = kHeadDim / 16;
  constexpr int kQueryTiles = kTileCols / 8;  // n-tiles of 8 queries
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  T* key_tile = reinterpret_cast<T*>(shared_bytes);
  T* value_tile = key_tile + kTileRows * kPitch;
  T* query_tile = value_tile + kTileRows * kPitch;
  T* dout_tile = query_tile + kTileCols * kPitch;
  T* ds_tile = dout_tile + kTileCols * kPitch;  // [64 keys][kScoresPitch] dS^T in T
  float* lse_tile = reinterpret_cast<float*>(ds_tile + kTileRows * kScoresPitch);  // log2 units
  float* d_tile = lse_tile + kTileCols;

  const int segment = blockIdx.y;
  const int kv_head = blockIdx.z;
  const SegmentBounds bounds = segment_bounds(params.cu_seqlens_q, params.cu_seqlens_k, segment);
  const int k0 = static_cast<int>(blockIdx.x) * kTileRows;
  if (k0 >= bounds.sk) return;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane / 4, quad_lane = lane % 4;
  const int group_size = params.heads / params.kv_heads;
  const int diagonal_offset = bounds.sk - bounds.sq;
  const int64_t q_stride = int64_t{params.heads} * kHeadDim;
  const int64_t kv_stride = int64_t{params.kv_heads} * kHeadDim;
  const int64_t total_q = int64_t{params.cu_seqlens_q[params.segments]};
  const float scale_log2 = params.softmax_scale * kLog2e;
  const int valid_keys = min(kTileRows, bounds.sk - k0);

  load_tile<T, kHeadDim>(key_tile, static_cast<const T*>(params.k) + kv_head * kHeadDim,
                         int64_t{bounds.k_begin} + k0, valid_keys, kv_stride);
  load_tile<T, kHeadDim>(value_tile, static_cast<const T*>(params.v) + kv_head * kHeadDim,
                         int64_t{bounds.k_begin} + k0, valid_keys, kv_stride);

  const int warp_key0 = warp * kRowsPerWarp;  // tile-relative
  const int keys[2] = {k0 + warp_key0 + group, k0 + warp_key0 + group + 8};  // segment-relative
  float dk_acc[kDimTiles][4], dv_acc[kDimTiles][4];
#pragma unroll
  for (int tile_index = 0; tile_index < kDimTiles; ++tile_index) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      dk_acc[tile_index][i] = 0.0f;
      dv_acc[tile_index][i] = 0.0f;
    }
  }

  // First query that sees key k0: i >= k0 - (sk - sq); earlier query tiles are fully masked.
  const int first_query = params.causal ? max(0, k0 - diagonal_offset) : 0;
  const int first_tile_query = (first_query / kTileCols) * kTileCols;

  for (int head = kv_head * group_size; head < (kv_head + 1) * group_size; ++head) {
    const T* q = static_cast<const T*>(params.q) + head * kHeadDim;
    const T* dout = static_cast<const T*>(params.dout) + head * kHeadDim;
    for (int m0 = first_tile_query; m0 < bounds.sq; m0 += kTileCols) {
      const int valid_queries = min(kTileCols, bounds.sq - m0);
      __syncthreads();  // previous step's query, dout and dS tiles are no longer read
      load_tile<T, kHeadDim>(query_tile, q, int64_t{bounds.q_begin} + m0, valid_queries, q_stride);
      load_tile<T, kHeadDim>(dout_tile, dout, int64_t{bounds.q_begin} + m0, valid_queries,
                             q_stride);
      for (int index = threadIdx.x; index < kTileCols; index += kThreads) {
        const bool valid = index < valid_queries;
        const int64_t entry = int64_t{head} * total_q + bounds.q_begin + m0 + index;
        lse_tile[index] = valid ? params.lse[entry] * kLog2e : 0.0f;
        d_tile[index] = valid ? params.softmax_d[entry] : 0.0f;
      }
      __syncthreads();

      // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys x 64 queries.
      float probabilities[kQueryTiles][4], dp[kQueryTiles][4];
#pragma unroll
      for (int query_tile_index = 0; query_tile_index < kQueryTiles; ++query_tile_index) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          probabilities[query_tile_index][i] = 0.0f;
          dp[query_tile_index][i] = 0.0f;
        }
      }
#pragma unroll
      for (int step = 0; step < kDimSteps; ++step) {
        uint32_t k_frag[4], v_frag[4];
        load_a(k_frag, key_tile, kPitch, warp_key0, step * 16, group, quad_lane);
        load_a(v_frag, value_tile, kPitch, warp_key0, step * 16, group, quad_lane);
#pragma unroll
        for (int query_tile_index = 0; query_tile_index < kQueryTiles; ++query_tile_index) {
          const int query_row = query_tile_index * 8 + group;
          const int col = step * 16 + 2 * quad_lane;
          mma_16816<T>(probabilities[query_tile_index], k_frag,
                       load_pair(query_tile, kPitch, query_row, col),
                       load_pair(query_tile, kPitch, query_row, col + 8));
          mma_16816<T>(dp[query_tile_index], v_frag, load_pair(dout_tile, kPitch, query_row, col),
                       load_pair(dout_tile, kPitch, query_row, col + 8));
        }
      }

      // P^T = exp(S^T * scale - lse) on visible entries; dS^T = P^T * (dP^T - D).
#pragma unroll
      for (int query_tile_index = 0; query_tile_index < kQueryTiles; ++query_tile_index) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int local_query = query_tile_index * 8 + 2 * quad_lane + (i & 1);
          const int query = m0 + local_query;
          const bool seen = query < bounds.sq &&
                            visible(query, keys[i / 2], bounds.sk, diagonal_offset, params.causal);
          const float probability =
              seen ? exp2f(probabilities[query_tile_index][i] * scale_log2 - lse_tile[local_query])
                   : 0.0f;
          probabilities[query_tile_index][i] = probability;
          dp[query_tile_index][i] = probability * (dp[query_tile_index][i] - d_tile[local_query]);
        }
      }

      // dV += P^T dO and dK += dS^T Q (queries are the k dimension of both products).
#pragma unroll
      for (int query_step = 0; query_step < kTileCols / 16; ++query_step) {
        const float(&p_left)[4] = probabilities[2 * query_step];
        const float(&p_right)[4] = probabilities[2 * query_step + 1];
        const uint32_t p_frag[4] = {
            pack_floats<T>(p_left[0], p_left[1]), pack_floats<T>(p_left[2], p_left[3]),
            pack_floats<T>(p_right[0], p_right[1]), pack_floats<T>(p_right[2], p_right[3])};
        const float(&ds_left)[4] = dp[2 * query_step];
        const float(&ds_right)[4] = dp[2 * query_step + 1];
        const uint32_t ds_frag[4] = {
            pack_floats<T>(ds_left[0], ds_left[1]), pack_floats<T>(ds_left[2], ds_left[3]),
            pack_floats<T>(ds_right[0], ds_right[1]), pack_floats<T>(ds_right[2], ds_right[3])};
        const int query_row = query_step * 16 + 2 * quad_lane;
#pragma unroll
        for (int tile_index = 0; tile_index < kDimTiles; ++tile_index) {
          const int dim = tile_index * 8 + group;
          mma_16816<T>(dv_acc[tile_index], p_frag,
                       load_column_pair(dout_tile, kPitch, query_row, dim),
                       load_column_pair(dout_tile, kPitch, query_row + 8, dim));
          mma_16816<T>(dk_acc[tile_index], ds_frag,
                       load_column_pair(query_tile, kPitch, query_row, dim),
                       load_column_pair(query_tile, kPitch, query_row + 8, dim));
        }
      }

      // dS^T to shared memory (rounded to T, as the dK product above used it), then
      // dQ = dS K with warps taking 16 query rows each.
#pragma unroll
      for (int query_tile_index = 0; query_tile_index < kQueryTiles; ++query_tile_index) {
#pragma unroll
        for (int which = 0; which < 2; ++which) {
          const int key_row = warp_key0 + group + which * 8;
          const int col = query_tile_index * 8 + 2 * quad_lane;
          *reinterpret_cast<uint32_t*>(ds_tile + key_row * kScoresPitch + col) = pack_floats<T>(
              dp[query_tile_index][which * 2], dp[query_tile_index][which * 2 + 1]);
        }
      }
      __syncthreads();

      const int warp_query0 = warp * kRowsPerWarp;  // tile-relative
      uint32_t ds_rows[kTileRows / 16][4];          // A fragments of dS (queries x keys)
#pragma unroll
      for (int key_step = 0; key_step < kTileRows / 16; ++key_step) {
        const int key_row = key_step * 16 + 2 * quad_lane;
        const int query_col = warp_query0 + group;
        ds_rows[key_step][0] = load_column_pair(ds_tile, kScoresPitch, key_row, query_col);
        ds_rows[key_step][1] = load_column_pair(ds_tile, kScoresPitch, key_row, query_col + 8);
        ds_rows[key_step][2] = load_column_pair(ds_tile, kScoresPitch, key_row + 8, query_col);
        ds_rows[key_step][3] = load_column_pair(ds_tile, kScoresPitch, key_row + 8, query_col + 8);
      }
      float* dq_accum = params.dq_accum + head * kHeadDim;
#pragma unroll
      for (int tile_index = 0; tile_index < kDimTiles; ++tile_index) {
        float dq_part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        const int dim = tile_index * 8 + group;
#pragma unroll
        for (int key_step = 0; key_step < kTileRows / 16; ++key_step) {
          const int key_row = key_step * 16 + 2 * quad_lane;
          mma_16816<T>(dq_part, ds_rows[key_step], load_column_pair(key_tile, kPitch, key_row, dim),
                       load_column_pair(key_tile, kPitch, key_row + 8, dim));
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int query = m0 + warp_query0 + group + (i / 2) * 8;
          if (query >= bounds.sq) continue;
          const int out_dim = tile_index * 8 + 2 * quad_lane + (i & 1);
          atomicAdd(dq_accum + (int64_t{bounds.q_begin} + query) * q_stride + out_dim,
                    dq_part[i] * params.softmax_scale);
        }
      }
    }
  }

  // dK = scale * dS^T Q, dV = P^T dO for this warp's keys.
  T* dk = static_cast<T*>(params.dk) + kv_head * kHeadDim;
  T* dv = static_cast<T*>(params.dv) + kv_head * kHeadDim;
#pragma unroll
  for (int which = 0; which < 2; ++which) {
    const int key = keys[which];
    if (key >= bounds.sk) continue;
    const int64_t row = int64_t{bounds.k_begin} + key;
#pragma unroll
    for (int tile_index = 0; tile_index < kDimTiles; ++tile_index) {
      const int dim = tile_index * 8 + 2 * quad_lane;
      *reinterpret_cast<uint32_t*>(dk + row * kv_stride + dim) =
          pack_floats<T>(dk_acc[tile_index][which * 2] * params.softmax_scale,
                         dk_acc[tile_index][which * 2 + 1] * params.softmax_scale);
      *reinterpret_cast<uint32_t*>(dv + row * kv_stride + dim) =
          pack_floats<T>(dv_acc[tile_index][which * 2], dv_acc[tile_index][which * 2 + 1]);
    }
  }
}

// Backward, step 3: dq = dq_accum in T (grid-stride; the element count is read on the device).
template <typename T>
__global__ void convert_dq_kernel(const VarlenAttentionBackwardParams params) {
  const int64_t elements =
      int64_t{params.cu_seqlens_q[params.segments]} * params.heads * params.head_dim;
  for (int64_t index = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; index < elements;
       index += int64_t{gridDim.x} * blockDim.x) {
    static_cast<T*>(params.dq)[index] = from_float<T>(params.dq_accum[index]);
  }
}

// ---------------------------------------------------------------------------------------------
// Launch plumbing.

template <int kHeadDim>
constexpr size_t forward_shared_bytes() {
  return size_t{2} * kTileRows * Pitch<kHeadDim>::value * 2;
}
template <int kHeadDim>
constexpr size_t backward_shared_bytes() {
  return size_t{4} * kTileRows * Pitch<kHeadDim>::value * 2 +
         size_t{kTileRows} * kScoresPitch * 2 + size_t{2} * kTileCols * sizeof(float);
}

bool aligned16(const void* pointer) { return reinterpret_cast<uintptr_t>(pointer) % 16 == 0; }

template <typename Params>
void check_cuda_params(const Params& params, const char* op) {
  CF_CHECK(params.dtype == ScalarType::kBFloat16 || params.dtype == ScalarType::kFloat16, op,
           ": the CUDA path takes bfloat16 or float16 (fp32 accumulation), got ScalarType(",
           static_cast<int>(params.dtype), "); convert q/k/v or use the CPU path for float32");
  CF_CHECK(params.head_dim == 64 || params.head_dim == 128, op,
           ": the CUDA path supports head_dim 64 and 128, got ", params.head_dim);
  CF_CHECK(params.segments <= 65535, op, ": at most 65535 segments per call (grid y), got ",
           params.segments);
  CF_CHECK(params.heads <= 65535, op, ": at most 65535 heads (grid z), got ", params.heads);
  CF_CHECK(aligned16(params.q) && aligned16(params.k) && aligned16(params.v), op,
           ": q, k and v must be 16-byte aligned (the kernel loads 8 elements at a time)");
}

// The shared-memory limit is a property of the function on a device: set it once per (kernel,
// device, size) instead of a driver call before every launch.
template <typename Kernel>
void allow_shared_bytes(Kernel kernel, size_t bytes) {
  static std::mutex mutex;
  static std::set<std::tuple<const void*, int, size_t>> allowed;
  int device = 0;
  CF_CUDA_CHECK(cudaGetDevice(&device));
  const auto key = std::make_tuple(reinterpret_cast<const void*>(kernel), device, bytes);
  const std::lock_guard<std::mutex> lock(mutex);
  if (allowed.count(key) != 0) return;
  CF_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     static_cast<int>(bytes)));
  allowed.insert(key);
}

template <typename T, int kHeadDim>
void launch_forward(const VarlenAttentionParams& params, cudaStream_t stream) {
  const int query_tiles = (params.max_seqlen_q + kTileRows - 1) / kTileRows;
  if (query_tiles == 0 || params.segments == 0) return;
  const size_t bytes = forward_shared_bytes<kHeadDim>();
  allow_shared_bytes(forward_kernel<T, kHeadDim>, bytes);
  const dim3 grid(query_tiles, params.segments, params.heads);
  forward_kernel<T, kHeadDim><<<grid, kThreads, bytes, stream>>>(params);
  CF_CUDA_CHECK_LAUNCH("varlen_attention forward_kernel");
}

// Blocks for a grid-stride loop over at most `work_items` items, `per_block` per block per pass.
unsigned grid_stride_blocks(int64_t work_items, int64_t per_block) {
  return static_cast<unsigned>(std::clamp<int64_t>((work_items + per_block - 1) / per_block, 1, 8192));
}

template <typename T, int kHeadDim>
void launch_backward(const VarlenAttentionBackwardParams& params, cudaStream_t stream) {
  if (params.segments == 0) return;
  // Upper bound of total_q (the exact count is read on the device).
  const int64_t max_rows = int64_t{params.segments} * params.max_seqlen_q * params.heads;
  constexpr int kPrepareWarps = 8;
  prepare_backward_kernel<T, kHeadDim>
      <<<grid_stride_blocks(max_rows, kPrepareWarps), kPrepareWarps * 32, 0, stream>>>(params);
  CF_CUDA_CHECK_LAUNCH("varlen_attention prepare_backward_kernel");
  // Every key row of every segment belongs to exactly one block, which writes its dK/dV even
  // when no query sees it (zeros): dk/dv need no memset.
  const int key_tiles = (params.max_seqlen_k + kTileRows - 1) / kTileRows;
  if (key_tiles > 0) {
    const size_t bytes = backward_shared_bytes<kHeadDim>();
    allow_shared_bytes(backward_kernel<T, kHeadDim>, bytes);
    const dim3 grid(key_tiles, params.segments, params.kv_heads);
    backward_kernel<T, kHeadDim><<<grid, kThreads, bytes, stream>>>(params);
    CF_CUDA_CHECK_LAUNCH("varlen_attention backward_kernel");
  }
  constexpr int kConvertThreads = 256;
  convert_dq_kernel<T><<<grid_stride_blocks(max_rows * kHeadDim, kConvertThreads),
                         kConvertThreads, 0, stream>>>(params);
  CF_CUDA_CHECK_LAUNCH("varlen_attention convert_dq_kernel");
}

}  // namespace

void varlen_attention_forward_cuda(const VarlenAttentionParams& params, void* stream) {
  const char* op = "varlen_attention_forward_cuda";
  check_params(params, OffsetsIn::kDeviceMemory);
  check_cuda_params(params, op);
  CF_CHECK(aligned16(params.out), op, ": out must be 16-byte aligned");
  const auto cuda_stream = static_cast<cudaStream_t>(stream);
  const bool bf16 = params.dtype == ScalarType::kBFloat16;
  if (params.head_dim == 64) {
    if (bf16) launch_forward<__nv_bfloat16, 64>(params, cuda_stream);
    else launch_forward<__half, 64>(params, cuda_stream);
  } else {
    if (bf16) launch_forward<__nv_bfloat16, 128>(params, cuda_stream);
    else launch_forward<__half, 128>(params, cuda_stream);
  }
}

void varlen_attention_backward_cuda(const VarlenAttentionBackwardParams& params, void* stream) {
  const char* op = "varlen_attention_backward_cuda";
  check_params(params, OffsetsIn::kDeviceMemory);
  check_cuda_params(params, op);
  CF_CHECK(aligned16(params.dout), op, ": dout must be 16-byte aligned");
  CF_CHECK(params.dq_accum != nullptr && params.softmax_d != nullptr, op,
           ": the CUDA backward needs its workspace: params.dq_accum [total_q, heads, head_dim] "
           "and params.softmax_d [heads, total_q], fp32");
  const auto cuda_stream = static_cast<cudaStream_t>(stream);
  const bool bf16 = params.dtype == ScalarType::kBFloat16;
  if (params.head_dim == 64) {
    if (bf16) launch_backward<__nv_bfloat16, 64>(params, cuda_stream);
    else launch_backward<__half, 64>(params, cuda_stream);
  } else {
    if (bf16) launch_backward<__nv_bfloat16, 128>(params, cuda_stream);
    else launch_backward<__half, 128>(params, cuda_stream);
  }
}

}  // namespace chunkflow::kernels
