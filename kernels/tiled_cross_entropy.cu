// CUDA path of the tiled cross-entropy (kernels/tiled_cross_entropy.h): cuBLAS GEMMs produce one
// tile of fp32 logits at a time; small kernels turn it into lse and per-token losses (forward) or
// into the logits gradient (backward), and one single-block kernel sums the losses.
#include <cublas_v2.h>
#include <math_constants.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "kernels/cuda_check.cuh"
#include "kernels/tiled_cross_entropy.h"

// CF_CUBLAS_CHECK(call): throws core::Error naming the call, file:line and cuBLAS's status.
#define CF_CUBLAS_CHECK(call)                                                                  \
  do {                                                                                         \
    const cublasStatus_t cf_cublas_status = (call);                                            \
    if (cf_cublas_status != CUBLAS_STATUS_SUCCESS)                                             \
      CF_FAIL("cuBLAS error in ", #call, " at ", __FILE__, ":", __LINE__, ": ",                \
              cublasGetStatusName(cf_cublas_status), " (", cublasGetStatusString(cf_cublas_status), \
              ")");                                                                            \
  } while (false)

namespace chunkflow::kernels {
namespace {

// Threads per block of the row kernels (one block per token row); a multiple of the warp size.
constexpr int kRowThreads = 256;
// Threads of the single block that sums the per-token losses.
constexpr int kReduceThreads = 512;
constexpr int kWarpSize = 32;

// One handle per (host thread, device): the stream is state of the handle, so threads sharing
// one would race between cublasSetStream and the GEMM. Handles are never destroyed, as in
// PyTorch: at thread or process exit the CUDA context may already be gone.
cublasHandle_t cublas_handle_for_current_device() {
  int device = 0;
  CF_CUDA_CHECK(cudaGetDevice(&device));
  thread_local std::vector<cublasHandle_t> handles;
  const auto index = static_cast<size_t>(device);
  if (handles.size() <= index) handles.resize(index + 1, nullptr);
  if (handles[index] == nullptr) CF_CUBLAS_CHECK(cublasCreate(&handles[index]));
  return handles[index];
}

cudaDataType_t cuda_data_type(ScalarType dtype) {
  switch (dtype) {
    case ScalarType::kFloat32: return CUDA_R_32F;
    case ScalarType::kBFloat16: return CUDA_R_16BF;
    case ScalarType::kFloat16: return CUDA_R_16F;
  }
  CF_FAIL("unknown ScalarType(", static_cast<int>(dtype), ")");
}

size_t element_bytes(ScalarType dtype) { return dtype == ScalarType::kFloat32 ? 4 : 2; }

// Row-major C [rows_c, cols_c] = op(A) @ op(B) with fp32 compute, written as cuBLAS's
// column-major call on the transposes (C^T = op(B)^T op(A)^T), which is why B comes first.
//   c_rows, c_cols, inner: the row-major shape of C and the summed dimension
//   a: row-major [c_rows, inner] (transpose_a false) or [inner, c_rows] (true); likewise b with
//   [inner, c_cols] or [c_cols, inner].
struct RowMajorGemm {
  int64_t c_rows, c_cols, inner;
  const void* a;
  bool transpose_a;
  const void* b;
  bool transpose_b;
  cudaDataType_t ab_type;
  void* c;
  cudaDataType_t c_type;
  float beta;
};

void row_major_gemm(cublasHandle_t handle, const RowMajorGemm& gemm) {
  const float alpha = 1.0f;
  // Leading dimensions of the row-major operands as stored (their column counts).
  const int64_t lda = gemm.transpose_a ? gemm.c_rows : gemm.inner;
  const int64_t ldb = gemm.transpose_b ? gemm.inner : gemm.c_cols;
  CF_CUBLAS_CHECK(cublasGemmEx(
      handle, gemm.transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N,
      gemm.transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(gemm.c_cols),
      static_cast<int>(gemm.c_rows), static_cast<int>(gemm.inner), &alpha, gemm.b, gemm.ab_type,
      static_cast<int>(ldb), gemm.a, gemm.ab_type, static_cast<int>(lda), &gemm.beta, gemm.c,
      gemm.c_type, static_cast<int>(gemm.c_cols), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// logits [count, vocab] fp32 = hidden rows [count, hidden_size] @ weight^T.
void tile_logits_gemm(cublasHandle_t handle, const void* hidden_rows, const void* weight,
                      float* logits, int64_t count, int64_t hidden_size, int64_t vocab,
                      ScalarType dtype) {
  row_major_gemm(handle, {count, vocab, hidden_size, hidden_rows, false, weight, true,
                          cuda_data_type(dtype), logits, CUDA_R_32F, 0.0f});
}

// Checks what the host can see without reading device memory (labels are checked by the caller).
void check_cuda_common(const char* what, const void* hidden, const void* weight,
                       const int64_t* labels, int64_t tokens, int64_t hidden_size, int64_t vocab,
                       int64_t tile_tokens, void* workspace_logits) {
  CF_CHECK(tokens >= 0, what, ": tokens must be >= 0, got ", tokens);
  CF_CHECK(hidden_size > 0, what, ": hidden_size must be > 0, got ", hidden_size);
  CF_CHECK(vocab > 0, what, ": vocab must be > 0, got ", vocab);
  CF_CHECK(tile_tokens > 0, what, ": tile_tokens must be > 0, got ", tile_tokens);
  // cuBLAS takes int dimensions and leading dimensions.
  CF_CHECK(hidden_size <= INT_MAX && vocab <= INT_MAX, what,
           ": hidden_size and vocab must be <= ", INT_MAX, " for cuBLAS, got ", hidden_size,
           " and ", vocab);
  CF_CHECK(std::min(tile_tokens, tokens) <= INT_MAX, what, ": a tile of ",
           std::min(tile_tokens, tokens), " tokens exceeds cuBLAS's int dimensions; lower tile_tokens");
  CF_CHECK(weight != nullptr, what, ": weight [vocab, hidden_size] must not be null");
  if (tokens == 0) return;
  CF_CHECK(hidden != nullptr, what, ": hidden [tokens, hidden_size] must not be null (tokens = ",
           tokens, ")");
  CF_CHECK(labels != nullptr, what, ": labels [tokens] must not be null (tokens = ", tokens, ")");
  CF_CHECK(workspace_logits != nullptr, what,
           ": workspace.logits [min(tile_tokens, tokens), vocab] fp32 must not be null");
}

// ---- kernels -----------------------------------------------------------------------------------

// Running maximum and sum of exp(x - max) of a set of logits.
struct MaxSum {
  float max;
  float sum;
};

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float max = fmaxf(a.max, b.max);
  // Both empty: exp(-inf - -inf) would be NaN.
  if (max == -CUDART_INF_F) return {max, 0.0f};
  return {max, a.sum * expf(a.max - max) + b.sum * expf(b.max - max)};
}

// Merges every thread's value; the result is valid in thread 0. blockDim.x = kRowThreads.
__device__ MaxSum block_merge(MaxSum value) {
  __shared__ MaxSum warp_values[kRowThreads / kWarpSize];
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    const MaxSum other{__shfl_down_sync(0xffffffffu, value.max, offset),
                       __shfl_down_sync(0xffffffffu, value.sum, offset)};
    value = merge(value, other);
  }
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  if (lane == 0) warp_values[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < kRowThreads / kWarpSize ? warp_values[lane] : MaxSum{-CUDART_INF_F, 0.0f};
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
      const MaxSum other{__shfl_down_sync(0xffffffffu, value.max, offset),
                         __shfl_down_sync(0xffffffffu, value.sum, offset)};
      value = merge(value, other);
    }
  }
  return value;
}

__device__ __forceinline__ bool label_in_vocab(int64_t label, int64_t vocab) {
  return label >= 0 && label < vocab;
}

// One block per token row of the tile.
//   logits [count, vocab] fp32; labels, lse, token_loss [count] (the tile's slice)
// lse = logsumexp(logits row), token_loss = lse - logits[label]; both 0 for an ignored token and
// NaN for a label outside the vocabulary.
__global__ void __launch_bounds__(kRowThreads)
    lse_and_loss_kernel(const float* __restrict__ logits, const int64_t* __restrict__ labels,
                        int64_t vocab, float* __restrict__ lse, float* __restrict__ token_loss) {
  const int64_t row = blockIdx.x;
  const int64_t label = labels[row];
  if (label == kIgnoreIndex) {
    if (threadIdx.x == 0) {
      lse[row] = 0.0f;
      token_loss[row] = 0.0f;
    }
    return;
  }
  const float* row_logits = logits + row * vocab;
  MaxSum local{-CUDART_INF_F, 0.0f};
  for (int64_t column = threadIdx.x; column < vocab; column += kRowThreads) {
    const float logit = row_logits[column];
    if (logit > local.max) {
      local.sum = local.sum * expf(local.max - logit) + 1.0f;
      local.max = logit;
    } else {
      // Also the path of a NaN logit, which then poisons the sum as it should.
      local.sum += expf(logit - local.max);
    }
  }
  const MaxSum total = block_merge(local);
  if (threadIdx.x == 0) {
    const float row_lse = total.max + logf(total.sum);
    lse[row] = row_lse;
    token_loss[row] = label_in_vocab(label, vocab) ? row_lse - row_logits[label] : CUDART_NAN_F;
  }
}

// loss_sum[0] = sum of token_loss [tokens], in double and in a fixed order (one block, fixed
// strides, a fixed tree), so the result is the same on every run.
__global__ void __launch_bounds__(kReduceThreads)
    sum_losses_kernel(const float* __restrict__ token_loss, int64_t tokens,
                      float* __restrict__ loss_sum) {
  __shared__ double partial[kReduceThreads];
  double sum = 0.0;
  for (int64_t token = threadIdx.x; token < tokens; token += kReduceThreads) {
    sum += static_cast<double>(token_loss[token]);
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int stride = kReduceThreads / 2; stride > 0; stride /= 2) {
    if (static_cast<int>(threadIdx.x) < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) *loss_sum = static_cast<float>(partial[0]);
}

// One block per token row of the tile: grad = (softmax(logits) - onehot(label)) * grad_loss in
// T, zero rows for ignored tokens, NaN rows for labels outside the vocabulary.
//   logits [count, vocab] fp32; labels, lse [count]; grad [count, vocab] T.
// For T = float, grad may be logits itself (each element is read, then written, by one thread),
// hence no __restrict__ on those two.
template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    logits_grad_kernel(const float* logits, const int64_t* __restrict__ labels,
                       const float* __restrict__ lse, int64_t vocab, float grad_loss,
                       const float* __restrict__ grad_loss_on_device, T* grad) {
  const int64_t row = blockIdx.x;
  if (grad_loss_on_device != nullptr) grad_loss = *grad_loss_on_device;
  const int64_t label = labels[row];
  T* grad_row = grad + row * vocab;
  if (label == kIgnoreIndex) {
    for (int64_t column = threadIdx.x; column < vocab; column += kRowThreads) {
      grad_row[column] = from_float<T>(0.0f);
    }
    return;
  }
  const float* row_logits = logits + row * vocab;
  const float row_lse = label_in_vocab(label, vocab) ? lse[row] : CUDART_NAN_F;
  for (int64_t column = threadIdx.x; column < vocab; column += kRowThreads) {
    float probability = expf(row_logits[column] - row_lse);
    if (column == label) probability -= 1.0f;
    grad_row[column] = from_float<T>(probability * grad_loss);
  }
}

// out [count] T = in [count] fp32, rounded to nearest.
template <typename T>
__global__ void round_to_dtype_kernel(const float* __restrict__ in, int64_t count,
                                      T* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < count;
       index += stride) {
    out[index] = from_float<T>(in[index]);
  }
}

}  // namespace

void tiled_cross_entropy_forward_cuda(const TiledCrossEntropyParams& params,
                                      const TiledCrossEntropyForwardWorkspace& workspace,
                                      void* stream) {
  constexpr const char* kWhat = "tiled_cross_entropy_forward_cuda";
  check_cuda_common(kWhat, params.hidden, params.weight, params.labels, params.tokens,
                    params.hidden_size, params.vocab, params.tile_tokens, workspace.logits);
  CF_CHECK(params.loss_sum != nullptr, kWhat, ": loss_sum [1] must not be null");
  if (params.tokens > 0) {
    CF_CHECK(params.lse != nullptr, kWhat, ": lse [tokens] must not be null (tokens = ",
             params.tokens, ")");
    CF_CHECK(workspace.token_loss != nullptr, kWhat,
             ": workspace.token_loss [tokens] fp32 must not be null");
  }
  const auto cuda_stream = static_cast<cudaStream_t>(stream);
  const int64_t tokens = params.tokens, hidden_size = params.hidden_size, vocab = params.vocab;
  const int64_t tile_tokens = std::min(params.tile_tokens, tokens);
  const size_t row_bytes = static_cast<size_t>(hidden_size) * element_bytes(params.dtype);

  if (tokens > 0) {
    cublasHandle_t handle = cublas_handle_for_current_device();
    CF_CUBLAS_CHECK(cublasSetStream(handle, cuda_stream));
    const auto* hidden = static_cast<const char*>(params.hidden);
    for (int64_t first = 0; first < tokens; first += tile_tokens) {
      const int64_t count = std::min(tile_tokens, tokens - first);
      tile_logits_gemm(handle, hidden + static_cast<size_t>(first) * row_bytes, params.weight,
                       workspace.logits, count, hidden_size, vocab, params.dtype);
      lse_and_loss_kernel<<<static_cast<unsigned>(count), kRowThreads, 0, cuda_stream>>>(
          workspace.logits, params.labels + first, vocab, params.lse + first,
          workspace.token_loss + first);
      CF_CUDA_CHECK_LAUNCH(lse_and_loss_kernel);
    }
  }
  // Also for tokens == 0, where it writes the empty sum 0.
  sum_losses_kernel<<<1, kReduceThreads, 0, cuda_stream>>>(workspace.token_loss, tokens,
                                                           params.loss_sum);
  CF_CUDA_CHECK_LAUNCH(sum_losses_kernel);
}

void tiled_cross_entropy_backward_cuda(const TiledCrossEntropyBackwardParams& params,
                                       const TiledCrossEntropyBackwardWorkspace& workspace,
                                       void* stream) {
  constexpr const char* kWhat = "tiled_cross_entropy_backward_cuda";
  check_cuda_common(kWhat, params.hidden, params.weight, params.labels, params.tokens,
                    params.hidden_size, params.vocab, params.tile_tokens, workspace.logits);
  CF_CHECK(params.d_weight != nullptr, kWhat, ": d_weight [vocab, hidden_size] must not be null");
  const bool low_precision = params.dtype != ScalarType::kFloat32;
  CF_CHECK(!low_precision || workspace.d_weight_fp32 != nullptr, kWhat,
           ": workspace.d_weight_fp32 [vocab, hidden_size] fp32 must not be null for bf16/fp16");
  if (params.tokens > 0) {
    CF_CHECK(params.lse != nullptr, kWhat, ": lse [tokens] (from the forward) must not be null");
    CF_CHECK(params.d_hidden != nullptr, kWhat,
             ": d_hidden [tokens, hidden_size] must not be null (tokens = ", params.tokens, ")");
    CF_CHECK(!low_precision || workspace.grad_logits != nullptr, kWhat,
             ": workspace.grad_logits [min(tile_tokens, tokens), vocab] dtype must not be null for "
             "bf16/fp16");
  }
  const auto cuda_stream = static_cast<cudaStream_t>(stream);
  const int64_t tokens = params.tokens, hidden_size = params.hidden_size, vocab = params.vocab;
  const int64_t tile_tokens = std::min(params.tile_tokens, tokens);
  const cudaDataType_t data_type = cuda_data_type(params.dtype);
  const size_t row_bytes = static_cast<size_t>(hidden_size) * element_bytes(params.dtype);
  // float32 accumulates straight into d_weight; bf16/fp16 sum in fp32 and round once at the end.
  float* d_weight_sum =
      low_precision ? workspace.d_weight_fp32 : static_cast<float*>(params.d_weight);
  const int64_t d_weight_elements = vocab * hidden_size;
  // Zeroed rather than relying on beta = 0 for the first tile, so that tokens == 0 also works.
  CF_CUDA_CHECK(cudaMemsetAsync(d_weight_sum, 0,
                                static_cast<size_t>(d_weight_elements) * sizeof(float),
                                cuda_stream));

  if (tokens > 0) {
    cublasHandle_t handle = cublas_handle_for_current_device();
    CF_CUBLAS_CHECK(cublasSetStream(handle, cuda_stream));
    void* grad_logits = low_precision ? workspace.grad_logits : workspace.logits;
    const auto* hidden = static_cast<const char*>(params.hidden);
    auto* d_hidden = static_cast<char*>(params.d_hidden);
    for (int64_t first = 0; first < tokens; first += tile_tokens) {
      const int64_t count = std::min(tile_tokens, tokens - first);
      const void* hidden_rows = hidden + static_cast<size_t>(first) * row_bytes;
      tile_logits_gemm(handle, hidden_rows, params.weight, workspace.logits, count, hidden_size,
                       vocab, params.dtype);
      dispatch_scalar_type(params.dtype, [&](auto tag) {
        using T = typename decltype(tag)::type;
        logits_grad_kernel<T><<<static_cast<unsigned>(count), kRowThreads, 0, cuda_stream>>>(
            workspace.logits, params.labels + first, params.lse + first, vocab, params.grad_loss,
            params.grad_loss_on_device, static_cast<T*>(grad_logits));
        CF_CUDA_CHECK_LAUNCH(logits_grad_kernel);
      });
      // d_hidden rows [count, hidden_size] = grad_logits [count, vocab] @ weight [vocab, hidden]
      row_major_gemm(handle, {count, hidden_size, vocab, grad_logits, false, params.weight, false,
                              data_type, d_hidden + static_cast<size_t>(first) * row_bytes,
                              data_type, 0.0f});
      // d_weight_sum [vocab, hidden] += grad_logits^T [vocab, count] @ hidden rows [count, hidden]
      row_major_gemm(handle, {vocab, hidden_size, count, grad_logits, true, hidden_rows, false,
                              data_type, d_weight_sum, CUDA_R_32F, 1.0f});
    }
  }

  if (low_precision) {
    const int64_t blocks = std::clamp<int64_t>((d_weight_elements + 255) / 256, 1, 4096);
    dispatch_scalar_type(params.dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      round_to_dtype_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, cuda_stream>>>(
          d_weight_sum, d_weight_elements, static_cast<T*>(params.d_weight));
      CF_CUDA_CHECK_LAUNCH(round_to_dtype_kernel);
    });
  }
}

}  // namespace chunkflow::kernels
