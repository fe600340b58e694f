// Dataset statistics; see dataset_stats.h.
#include "data/dataset_stats.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/strings.h"
#include "data/chunk_plan.h"
#include "data/sampler.h"

namespace chunkflow::data {
namespace {

int64_t percentile(const std::vector<int32_t>& sorted, double fraction) {
  if (sorted.empty()) return 0;
  const auto index = static_cast<size_t>(std::min<double>(static_cast<double>(sorted.size() - 1),
                                                          std::floor(fraction * static_cast<double>(sorted.size()))));
  return sorted[index];
}

std::string bin_label(const HistogramBin& bin) {
  if (bin.upper - bin.lower == 1) return std::to_string(bin.lower);
  return std::to_string(bin.lower) + "-" + std::to_string(bin.upper - 1);
}

}  // namespace

LengthSummary summarize_lengths(const std::vector<int32_t>& lengths) {
  LengthSummary summary;
  summary.sequences = static_cast<int64_t>(lengths.size());
  if (lengths.empty()) return summary;
  std::vector<int32_t> sorted(lengths);
  std::sort(sorted.begin(), sorted.end());
  int64_t below = 0;
  for (const int32_t length : sorted) {
    summary.tokens += length;
    below += length < 4096;
  }
  summary.min = sorted.front();
  summary.max = sorted.back();
  summary.mean = static_cast<double>(summary.tokens) / static_cast<double>(sorted.size());
  summary.p50 = percentile(sorted, 0.5);
  summary.p90 = percentile(sorted, 0.9);
  summary.p99 = percentile(sorted, 0.99);
  summary.p999 = percentile(sorted, 0.999);
  summary.share_below_4k = static_cast<double>(below) / static_cast<double>(sorted.size());
  return summary;
}

std::vector<HistogramBin> length_histogram(const std::vector<int32_t>& lengths) {
  std::vector<HistogramBin> bins;
  for (const int32_t length : lengths) {
    size_t index = 0;
    if (length > 0) index = 1 + static_cast<size_t>(std::floor(std::log2(static_cast<double>(length))));
    while (bins.size() <= index) {
      const size_t k = bins.size();
      HistogramBin bin;
      bin.lower = k == 0 ? 0 : int64_t{1} << (k - 1);
      bin.upper = k == 0 ? 1 : int64_t{1} << k;
      bins.push_back(bin);
    }
    ++bins[index].sequences;
    bins[index].tokens += length;
  }
  // Leading empty bins (no length-0 sequences, etc.) say nothing.
  while (!bins.empty() && bins.front().sequences == 0) bins.erase(bins.begin());
  return bins;
}

std::string histogram_text(const std::vector<HistogramBin>& bins) {
  int64_t sequences = 0, tokens = 0, most = 1;
  for (const auto& bin : bins) {
    sequences += bin.sequences;
    tokens += bin.tokens;
    most = std::max(most, bin.sequences);
  }
  constexpr int kBarWidth = 40;
  using core::pad_left;
  using core::pad_right;
  const auto percent = [](int64_t part, int64_t whole, int decimals) {
    return core::format_fixed(100.0 * static_cast<double>(part) / static_cast<double>(std::max<int64_t>(whole, 1)), decimals);
  };
  std::string text = pad_right("  length", 16) + pad_left("sequences", 10) + pad_left("seq %", 8) +
                     pad_left("token %", 9) + pad_left("cum seq %", 11) + "  (bar: log scale)\n";
  int64_t cumulative = 0;
  for (const auto& bin : bins) {
    cumulative += bin.sequences;
    const double bar = bin.sequences == 0 ? 0.0
                                          : std::log10(1.0 + static_cast<double>(bin.sequences)) /
                                                std::log10(1.0 + static_cast<double>(most));
    text += pad_right("  " + bin_label(bin), 16) + pad_left(std::to_string(bin.sequences), 10) +
            pad_left(percent(bin.sequences, sequences, 2), 8) + pad_left(percent(bin.tokens, tokens, 2), 9) +
            pad_left(percent(cumulative, sequences, 3), 11) + "  " +
            std::string(static_cast<size_t>(std::lround(bar * kBarWidth)), '#') + "\n";
  }
  return text;
}

std::string histogram_svg(const std::vector<HistogramBin>& bins, const std::string& title) {
  const int width = 800, height = 380, left = 70, right = 70, top = 40, bottom = 80;
  const double plot_w = width - left - right, plot_h = height - top - bottom;
  int64_t most = 1, tokens = 0, most_tokens = 1;
  for (const auto& bin : bins) {
    most = std::max(most, bin.sequences);
    most_tokens = std::max(most_tokens, bin.tokens);
    tokens += bin.tokens;
  }
  // Token shares use the right axis, scaled so the largest share reaches the top.
  const double top_share = static_cast<double>(most_tokens) / static_cast<double>(std::max<int64_t>(tokens, 1));
  const double log_top = std::ceil(std::log10(static_cast<double>(most) + 1.0));
  const double slot = bins.empty() ? plot_w : plot_w / static_cast<double>(bins.size());
  std::string svg = core::str_cat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"", width, "\" height=\"", height,
      "\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
      "<text x=\"", width / 2, "\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">", core::xml_escape(title), "</text>\n");
  // Horizontal grid at each power of ten.
  for (int decade = 0; decade <= static_cast<int>(log_top); ++decade) {
    const double y = top + plot_h - plot_h * decade / std::max(log_top, 1.0);
    svg += core::str_cat("<line x1=\"", left, "\" x2=\"", width - right, "\" y1=\"", core::format_fixed(y, 1),
                         "\" y2=\"", core::format_fixed(y, 1), "\" stroke=\"#ddd\"/>\n<text x=\"", left - 6, "\" y=\"",
                         core::format_fixed(y + 4, 1), "\" text-anchor=\"end\">",
                         std::to_string(static_cast<int64_t>(std::llround(std::pow(10.0, decade)))), "</text>\n");
  }
  for (int tick = 0; tick <= 4; ++tick) {
    const double y = top + plot_h - plot_h * tick / 4.0;
    svg += core::str_cat("<text x=\"", width - right + 6, "\" y=\"", core::format_fixed(y + 4, 1), "\" fill=\"#c05a1c\">",
                         core::format_fixed(100.0 * top_share * tick / 4.0, 1), "%</text>\n");
  }
  for (size_t i = 0; i < bins.size(); ++i) {
    const auto& bin = bins[i];
    const double x = left + slot * static_cast<double>(i);
    const double h = bin.sequences == 0 ? 0.0 : plot_h * std::log10(static_cast<double>(bin.sequences) + 1.0) / std::max(log_top, 1.0);
    const double token_h = plot_h * static_cast<double>(bin.tokens) / static_cast<double>(most_tokens);
    svg += core::str_cat("<rect x=\"", core::format_fixed(x + slot * 0.1, 1), "\" y=\"", core::format_fixed(top + plot_h - h, 1),
                         "\" width=\"", core::format_fixed(slot * 0.45, 1), "\" height=\"", core::format_fixed(h, 1),
                         "\" fill=\"#4477aa\"><title>", bin_label(bin), ": ", bin.sequences, " sequences</title></rect>\n");
    svg += core::str_cat("<rect x=\"", core::format_fixed(x + slot * 0.55, 1), "\" y=\"", core::format_fixed(top + plot_h - token_h, 1),
                         "\" width=\"", core::format_fixed(slot * 0.35, 1), "\" height=\"", core::format_fixed(token_h, 1),
                         "\" fill=\"#ee7733\"><title>", bin_label(bin), ": ", bin.tokens, " tokens</title></rect>\n");
    svg += core::str_cat("<text transform=\"translate(", core::format_fixed(x + slot * 0.5, 1), ",", top + plot_h + 12,
                         ") rotate(40)\">", core::xml_escape(bin_label(bin)), "</text>\n");
  }
  svg += core::str_cat(
      "<line x1=\"", left, "\" x2=\"", left, "\" y1=\"", top, "\" y2=\"", top + plot_h, "\" stroke=\"black\"/>\n",
      "<line x1=\"", left, "\" x2=\"", width - right, "\" y1=\"", top + plot_h, "\" y2=\"", top + plot_h, "\" stroke=\"black\"/>\n",
      "<text x=\"", width / 2, "\" y=\"", height - 8, "\" text-anchor=\"middle\">sequence length (tokens, power-of-two bins)</text>\n",
      "<text transform=\"translate(16,", top + plot_h / 2, ") rotate(-90)\" text-anchor=\"middle\">sequences (log scale)</text>\n",
      "<text transform=\"translate(", width - 12, ",", top + plot_h / 2, ") rotate(90)\" text-anchor=\"middle\" fill=\"#c05a1c\">share of all tokens</text>\n",
      "<rect x=\"", left + 12, "\" y=\"", top, "\" width=\"10\" height=\"10\" fill=\"#4477aa\"/><text x=\"",
      left + 27, "\" y=\"", top + 9, "\">sequences (log)</text>\n",
      "<rect x=\"", left + 12, "\" y=\"", top + 16, "\" width=\"10\" height=\"10\" fill=\"#ee7733\"/><text x=\"",
      left + 27, "\" y=\"", top + 25, "\">share of tokens (right axis)</text>\n</svg>\n");
  return svg;
}

double BatchingFigures::fill_ratio() const {
  return capacity_tokens == 0 ? 1.0 : static_cast<double>(real_tokens) / static_cast<double>(capacity_tokens);
}

PackingComparison compare_batching(const std::vector<int32_t>& lengths, const configs::DataConfig& data,
                                   const ComparisonOptions& options) {
  CF_CHECK(options.chunk_size > 0, "--chunk-size must be > 0, got ", options.chunk_size);
  CF_CHECK(options.micro_batch_sequences > 0, "--micro-batch-sequences must be > 0, got ",
           options.micro_batch_sequences);
  const int64_t longest = lengths.empty() ? 0 : *std::max_element(lengths.begin(), lengths.end());
  const int64_t max_context = options.max_context > 0 ? options.max_context : std::max<int64_t>(longest, 1);
  CF_CHECK(max_context >= longest, "--max-context (", max_context, ") is shorter than the longest sequence (",
           longest, "); pack-to-max-length cannot hold it");

  PackingComparison result;
  result.chunk_size = options.chunk_size;
  result.chunkflow = {"chunkflow", 0, 0, 0, options.chunk_size};
  result.pad_to_longest = {"pad-to-longest", 0, 0, 0, 0};
  result.pack_to_max_length = {"pack-to-max-length", 0, 0, 0, max_context};

  GlobalBatchSampler sampler(lengths, data, options.seed);
  std::vector<PlanSequence> batch;
  do {
    const GlobalBatch global_batch = sampler.next();
    ++result.global_batches;
    result.real_tokens += global_batch.tokens;
    batch.clear();
    for (const int64_t sequence : global_batch.sequences) {
      batch.push_back(PlanSequence{lengths[static_cast<size_t>(sequence)], {}});
    }
    const ChunkPlan plan = build_chunk_plan(batch, options.chunk_size);
    result.chunks += static_cast<int64_t>(plan.chunks().size());
    result.standalone_chunks += plan.standalone_chunks();
    result.dependent_chunks += plan.dependent_chunks();
    result.split_sequences += plan.split_sequences();
    result.chunk_lower_bound += plan.chunk_lower_bound();
    // Rows of max_context never split a sequence, so the same packer gives pack-to-max-length.
    const ChunkPlan rows = build_chunk_plan(batch, max_context);
    result.pack_to_max_length.units += static_cast<int64_t>(rows.chunks().size());
    // The plan chunkflow-train runs for chunking.strategy pad_to_longest.
    const ChunkPlan padded = build_padded_plan(batch, options.micro_batch_sequences);
    result.pad_to_longest.units += static_cast<int64_t>(padded.chunks().size());
    result.pad_to_longest.capacity_tokens += padded.total_tokens() + padded.padding_tokens();
  } while (sampler.position().epoch == 0 && sampler.position().cursor < sampler.dataset_size());

  for (BatchingFigures* figures : {&result.chunkflow, &result.pad_to_longest, &result.pack_to_max_length}) {
    figures->real_tokens = result.real_tokens;
  }
  result.chunkflow.units = result.chunks;
  result.chunkflow.capacity_tokens = result.chunks * options.chunk_size;
  result.pack_to_max_length.capacity_tokens = result.pack_to_max_length.units * max_context;
  return result;
}

std::string PackingComparison::to_text() const {
  using core::pad_left;
  std::string text = core::str_cat(
      "one epoch: ", global_batches, " global batches, ", real_tokens, " real tokens\n",
      "chunk_size ", chunk_size, ": ", chunks, " chunks (", standalone_chunks, " standalone, ", dependent_chunks,
      " dependent from ", split_sequences, " split sequences); lower bound ", chunk_lower_bound, " (+",
      core::format_fixed(chunk_lower_bound ? 100.0 * static_cast<double>(chunks - chunk_lower_bound) / static_cast<double>(chunk_lower_bound) : 0.0, 2),
      "%)\n\n");
  text += core::pad_right("  strategy", 22) + pad_left("units", 8) + pad_left("unit size", 12) +
          pad_left("capacity tokens", 17) + pad_left("fill", 8) + "\n";
  for (const BatchingFigures* figures : {&chunkflow, &pack_to_max_length, &pad_to_longest}) {
    text += core::pad_right("  " + figures->name, 22) + pad_left(std::to_string(figures->units), 8) +
            pad_left(figures->unit_tokens > 0 ? std::to_string(figures->unit_tokens) : "varies", 12) +
            pad_left(std::to_string(figures->capacity_tokens), 17) +
            pad_left(core::format_fixed(100.0 * figures->fill_ratio(), 1) + "%", 8) + "\n";
  }
  return text;
}

}  // namespace chunkflow::data
