// Fuzzes `chunkflow-data prepare` (data::prepare_jsonl): JSONL of token ids -> indexed dataset.
//
// Input: one option byte, then the .jsonl text. The byte picks skip_bad_lines (bit 0), the dtype
// (bits 1-3: auto or one of the token dtypes) and vocab_size (bits 4-7, from a table that
// includes the dtype boundaries). Contract: prepare_jsonl either throws core::Error and writes
// nothing, or writes a dataset (and loss mask) that the reader accepts and whose counts equal the
// summary; any other exception, a crash or a sanitizer report is a bug.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "core/file_io.h"
#include "core/logging.h"
#include "data/indexed_dataset.h"
#include "data/jsonl_prepare.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

namespace data = chunkflow::data;
namespace fuzz = chunkflow::fuzz;

constexpr const char* kDtypes[] = {"auto", "uint8", "int8", "int16", "uint16", "int32", "int64",
                                   "float32"};
constexpr int64_t kVocabSizes[] = {0,     1,      2,      100,     127,      128,        255,   256,
                                   32768, 65499,  65500,  65536,   1 << 24,  (1 << 24) + 2, 151936,
                                   int64_t{1} << 31};

void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz: contract broken: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // A skipped stale mask is logged as a warning per input; the fuzzer's own output is enough.
  chunkflow::core::set_log_level(chunkflow::core::LogLevel::kError);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data_bytes, size_t size) {
  if (size == 0) return 0;
  static const std::string input = fuzz::scratch_path("input.jsonl");
  static const std::string output = fuzz::scratch_path("out/prepared");
  const uint8_t options_byte = data_bytes[0];
  fuzz::write_bytes(input, std::string_view(reinterpret_cast<const char*>(data_bytes + 1), size - 1));
  // Each input starts from an empty output folder, so "nothing was written" can be checked.
  for (const std::string& prefix : {output, data::loss_mask_prefix(output)}) {
    fuzz::remove_file(data::idx_path(prefix));
    fuzz::remove_file(data::bin_path(prefix));
  }

  data::PrepareOptions options;
  options.input = input;
  options.output_prefix = output;
  options.skip_bad_lines = (options_byte & 1) != 0;
  options.dtype = kDtypes[(options_byte >> 1) & 7];
  options.vocab_size = kVocabSizes[options_byte >> 4];
  options.max_reported_errors = 3;
  options.show_progress = false;

  data::PrepareSummary summary;
  try {
    summary = data::prepare_jsonl(options);
  } catch (const chunkflow::core::Error&) {
    require(!chunkflow::core::path_exists(data::idx_path(output)) &&
                !chunkflow::core::path_exists(data::bin_path(output)),
            "prepare_jsonl failed but left a dataset behind");
    return 0;
  }
  require(summary.sequences > 0 && summary.sequences <= summary.lines, "bad sequence count");
  require(summary.lines == summary.sequences + summary.blank_lines + summary.bad_lines,
          "lines do not add up");
  require(static_cast<int64_t>(summary.errors.size()) == std::min<int64_t>(summary.bad_lines, 3),
          "reported errors do not match bad lines");
  require(!summary.to_text().empty(), "empty summary text");

  const data::IndexedDataset dataset(output);
  require(dataset.size() == summary.sequences && dataset.total_tokens() == summary.tokens &&
              dataset.documents() == summary.sequences,
          "written dataset differs from the summary");
  int64_t min_length = dataset.size() > 0 ? dataset.length(0) : 0;
  int64_t max_length = 0;
  for (int64_t sequence = 0; sequence < dataset.size(); ++sequence) {
    const auto tokens = dataset.read(sequence);
    for (const int32_t token : tokens) {
      require(token >= 0 && (options.vocab_size == 0 || token < options.vocab_size),
              "a written token id is outside [0, vocab_size)");
    }
    min_length = std::min(min_length, dataset.length(sequence));
    max_length = std::max(max_length, dataset.length(sequence));
  }
  require(min_length == summary.min_length && max_length == summary.max_length,
          "min/max length differ from the summary");

  require(summary.has_loss_mask == chunkflow::core::path_exists(data::idx_path(data::loss_mask_prefix(output))),
          "loss mask presence differs from the summary");
  int64_t loss_tokens = 0;
  if (summary.has_loss_mask) {
    const data::LossMaskDataset mask(data::loss_mask_prefix(output), dataset);
    for (int64_t sequence = 0; sequence < mask.size(); ++sequence) {
      const auto values = mask.read(sequence);
      loss_tokens += std::count(values.begin() + 1, values.end(), uint8_t{1});
    }
  } else {
    loss_tokens = summary.tokens - summary.sequences;
  }
  require(loss_tokens == summary.loss_tokens, "loss tokens differ from the summary");
  return 0;
}
