// GPU attention benchmark: ChunkFlow's CUDA varlen attention against PyTorch's FlashAttention
// backend (at::_flash_attention_forward / _backward, what scaled_dot_product_attention's flash
// path calls) on the same inputs: causal varlen, bf16, head_dim 128, GQA 32/8 heads, 16K-64K
// tokens as packed 4K-token segments and as one long segment. Reports TFLOP/s of each and our
// ratio, and the max difference between the two outputs as a sanity check. Timing: CUDA events
// around `iterations` back-to-back calls after warm-up, median of `repeats`.
//
//   attention_gpu_bench [--json PATH] [--iterations N] [--repeats N] [--max-tokens N]
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "kernels/attention_torch.h"
#include "kernels/device.h"

namespace {

constexpr int64_t kHeads = 32;
constexpr int64_t kKvHeads = 8;
constexpr int64_t kHeadDim = 128;

struct Options {
  std::string json_path;
  int iterations = 10;
  int repeats = 5;
  int64_t max_tokens = 65536;
};

Options parse(int argc, char** argv) {
  Options options;
  for (int index = 1; index < argc; ++index) {
    const std::string flag = argv[index];
    const auto value = [&]() -> std::string {
      if (index + 1 >= argc) {
        std::fprintf(stderr, "attention_gpu_bench: %s needs a value\n", flag.c_str());
        std::exit(2);
      }
      return argv[++index];
    };
    if (flag == "--json") options.json_path = value();
    else if (flag == "--iterations") options.iterations = std::stoi(value());
    else if (flag == "--repeats") options.repeats = std::stoi(value());
    else if (flag == "--max-tokens") options.max_tokens = std::stoll(value());
    else {
      std::fprintf(stderr,
                   "attention_gpu_bench: unknown argument '%s' (use --json PATH, --iterations N, "
                   "--repeats N, --max-tokens N)\n",
                   flag.c_str());
      std::exit(2);
    }
  }
  return options;
}

// Median milliseconds per call of `body`.
double time_ms(const std::function<void()>& body, const Options& options) {
  for (int warmup = 0; warmup < 3; ++warmup) body();
  torch::cuda::synchronize();
  std::vector<double> samples;
  for (int repeat = 0; repeat < options.repeats; ++repeat) {
    at::cuda::CUDAEvent start(cudaEventDefault), stop(cudaEventDefault);
    start.record(c10::cuda::getCurrentCUDAStream());
    for (int iteration = 0; iteration < options.iterations; ++iteration) body();
    stop.record(c10::cuda::getCurrentCUDAStream());
    stop.synchronize();
    samples.push_back(start.elapsed_time(stop) / options.iterations);
  }
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

struct Row {
  int64_t tokens = 0, segment_tokens = 0;
  double ours_forward_ms = 0, flash_forward_ms = 0, ours_step_ms = 0, flash_step_ms = 0;
  double forward_flops = 0, step_flops = 0, max_output_difference = 0;
};

Row measure(int64_t tokens, int64_t segment_tokens, const Options& options) {
  const auto bf16 = torch::dtype(torch::kBFloat16).device(torch::kCUDA);
  const auto q = torch::randn({tokens, kHeads, kHeadDim}, bf16);
  const auto k = torch::randn({tokens, kKvHeads, kHeadDim}, bf16);
  const auto v = torch::randn({tokens, kKvHeads, kHeadDim}, bf16);
  const auto dout = torch::randn({tokens, kHeads, kHeadDim}, bf16);
  std::vector<int32_t> offsets{0};
  while (offsets.back() < tokens) {
    offsets.push_back(static_cast<int32_t>(std::min<int64_t>(offsets.back() + segment_tokens, tokens)));
  }
  const auto cu_host = torch::tensor(offsets, torch::kInt32);
  const auto cu_device = cu_host.cuda();
  const double scale = 1.0 / std::sqrt(static_cast<double>(kHeadDim));

  // Visible (query, key) pairs under the causal mask, per head.
  double entries = 0;
  for (size_t b = 0; b + 1 < offsets.size(); ++b) {
    const double length = offsets[b + 1] - offsets[b];
    entries += length * (length + 1) / 2;
  }
  Row row;
  row.tokens = tokens;
  row.segment_tokens = segment_tokens;
  // Forward: QK^T and PV, 2 flops per multiply-add. Backward: 5 products (S again, dV, dP, dQ, dK).
  row.forward_flops = 4.0 * entries * kHeadDim * kHeads;
  row.step_flops = row.forward_flops * 3.5;

  const auto flash_forward = [&] {
    return at::_flash_attention_forward(q, k, v, cu_device, cu_device, segment_tokens,
                                        segment_tokens, 0.0, /*is_causal=*/true,
                                        /*return_debug_mask=*/false, scale);
  };
  const auto ours_out = chunkflow::kernels::varlen_attention_forward(
      q, k, v, cu_host, cu_host, segment_tokens, segment_tokens, scale);
  const auto flash_result = flash_forward();
  row.max_output_difference =
      (std::get<0>(ours_out).to(torch::kFloat) - std::get<0>(flash_result).to(torch::kFloat))
          .abs()
          .max()
          .item<double>();

  row.ours_forward_ms = time_ms(
      [&] {
        chunkflow::kernels::varlen_attention_forward(q, k, v, cu_host, cu_host, segment_tokens,
                                                     segment_tokens, scale);
      },
      options);
  row.flash_forward_ms = time_ms([&] { flash_forward(); }, options);

  const auto qg = q.detach().requires_grad_(true);
  const auto kg = k.detach().requires_grad_(true);
  const auto vg = v.detach().requires_grad_(true);
  row.ours_step_ms = time_ms(
      [&] {
        const auto out = chunkflow::kernels::varlen_attention(qg, kg, vg, cu_host, cu_host,
                                                              segment_tokens, segment_tokens, scale);
        out.backward(dout);
        qg.mutable_grad().reset();
        kg.mutable_grad().reset();
        vg.mutable_grad().reset();
      },
      options);
  row.flash_step_ms = time_ms(
      [&] {
        const auto [out, lse, rng_state, unused, debug] = flash_forward();
        at::_flash_attention_backward(dout, q, k, v, out, lse, cu_device, cu_device,
                                      segment_tokens, segment_tokens, 0.0, /*is_causal=*/true,
                                      rng_state, unused, scale);
      },
      options);
  return row;
}

double tflops(double flops, double ms) { return flops / (ms * 1e-3) / 1e12; }

}  // namespace

int main(int argc, char** argv) {
  const Options options = parse(argc, argv);
  if (!torch::cuda::is_available()) {
    std::fprintf(stderr, "attention_gpu_bench: no CUDA device (%s)\n",
                 chunkflow::kernels::describe_devices().c_str());
    return 1;
  }
  torch::manual_seed(0);
  std::printf("%s\n", chunkflow::kernels::describe_devices().c_str());
  std::printf("causal varlen attention, bf16, head_dim %lld, heads %lld/%lld (q/kv); TFLOP/s, median of %d x %d calls\n",
              static_cast<long long>(kHeadDim), static_cast<long long>(kHeads),
              static_cast<long long>(kKvHeads), options.repeats, options.iterations);
  std::printf("%8s %8s | %9s %9s %6s | %9s %9s %6s | %8s\n", "tokens", "segment", "fwd ours",
              "fwd flash", "ratio", "f+b ours", "f+b flash", "ratio", "max|diff|");
  std::vector<Row> rows;
  for (int64_t tokens = 16384; tokens <= options.max_tokens; tokens *= 2) {
    for (int64_t segment_tokens : {int64_t{4096}, tokens}) {
      const Row row = measure(tokens, segment_tokens, options);
      rows.push_back(row);
      std::printf("%8lld %8lld | %9.1f %9.1f %6.2f | %9.1f %9.1f %6.2f | %8.4f\n",
                  static_cast<long long>(row.tokens), static_cast<long long>(row.segment_tokens),
                  tflops(row.forward_flops, row.ours_forward_ms),
                  tflops(row.forward_flops, row.flash_forward_ms),
                  row.flash_forward_ms / row.ours_forward_ms,
                  tflops(row.step_flops, row.ours_step_ms), tflops(row.step_flops, row.flash_step_ms),
                  row.flash_step_ms / row.ours_step_ms, row.max_output_difference);
      std::fflush(stdout);
    }
  }
  std::printf("ratio = flash time / our time (above 1: ours is faster)\n");

  if (!options.json_path.empty()) {
    std::ofstream json(options.json_path);
    json << "{\n  \"device\": \"" << chunkflow::kernels::describe_devices() << "\",\n"
         << "  \"dtype\": \"bfloat16\", \"head_dim\": " << kHeadDim << ", \"heads\": " << kHeads
         << ", \"kv_heads\": " << kKvHeads << ", \"causal\": true,\n  \"rows\": [\n";
    for (size_t index = 0; index < rows.size(); ++index) {
      const Row& row = rows[index];
      json << "    {\"tokens\": " << row.tokens << ", \"segment_tokens\": " << row.segment_tokens
           << ", \"ours_forward_ms\": " << row.ours_forward_ms
           << ", \"flash_forward_ms\": " << row.flash_forward_ms
           << ", \"ours_forward_backward_ms\": " << row.ours_step_ms
           << ", \"flash_forward_backward_ms\": " << row.flash_step_ms
           << ", \"ours_forward_tflops\": " << tflops(row.forward_flops, row.ours_forward_ms)
           << ", \"flash_forward_tflops\": " << tflops(row.forward_flops, row.flash_forward_ms)
           << ", \"ours_forward_backward_tflops\": " << tflops(row.step_flops, row.ours_step_ms)
           << ", \"flash_forward_backward_tflops\": " << tflops(row.step_flops, row.flash_step_ms)
           << ", \"max_output_difference\": " << row.max_output_difference << "}"
           << (index + 1 < rows.size() ? ",\n" : "\n");
    }
    json << "  ]\n}\n";
    if (!json) {
      std::fprintf(stderr, "attention_gpu_bench: could not write %s\n", options.json_path.c_str());
      return 1;
    }
  }
  return 0;
}
