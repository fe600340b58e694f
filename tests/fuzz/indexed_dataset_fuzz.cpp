// Fuzzes the Megatron .idx/.bin reader (data::IndexedDataset) and the loss-mask companion
// (data::LossMaskDataset) through their real constructors, which open files by prefix.
//
// Input: up to four sections (fuzz_support.h): tokens .idx, tokens .bin, and when present the
// loss mask's .idx and .bin. Contract: the constructors either throw core::Error or produce a
// dataset whose every sequence reads back in bounds with the advertised lengths; any other
// exception, a crash or a sanitizer report is a bug.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/indexed_dataset.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

using chunkflow::data::IndexedDataset;
using chunkflow::data::LossMaskDataset;
namespace fuzz = chunkflow::fuzz;

// A broken reader contract (not a rejected input): stop with a message the crash report shows.
void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz: contract broken: %s\n", what);
    std::abort();
  }
}

// Reads every sequence whole and in two parts; a value without an int32 form must be rejected
// with core::Error, never read out of bounds.
void read_all(const IndexedDataset& dataset) {
  int64_t tokens = 0;
  for (int64_t sequence = 0; sequence < dataset.size(); ++sequence) {
    const int64_t length = dataset.length(sequence);
    require(length >= 0, "negative sequence length");
    tokens += length;
    require(static_cast<int64_t>(dataset.bytes(sequence).size()) ==
                length * static_cast<int64_t>(chunkflow::data::dtype_size(dataset.dtype())),
            "bytes() size differs from length x itemsize");
    try {
      const std::vector<int32_t> whole = dataset.read(sequence);
      require(static_cast<int64_t>(whole.size()) == length, "read() size differs from length()");
      if (length >= 2) {
        std::vector<int32_t> tail(static_cast<size_t>(length - 1));
        dataset.read(sequence, 1, length - 1, tail.data());
        require(std::equal(tail.begin(), tail.end(), whole.begin() + 1), "partial read differs");
      }
    } catch (const chunkflow::core::Error&) {
      // A stored value that is not a token id (float, out of int32 range): rejected, fine.
    }
  }
  require(tokens == dataset.total_tokens(), "total_tokens() differs from the sum of lengths");
  const auto& documents = dataset.document_indices();
  require(!documents.empty() && documents.front() == 0 && documents.back() == dataset.size(),
          "document indices do not run from 0 to the sequence count");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string tokens = fuzz::scratch_path("tokens");
  static const std::string mask = chunkflow::data::loss_mask_prefix(tokens);

  fuzz::Sections sections(data, size);
  fuzz::write_bytes(chunkflow::data::idx_path(tokens), sections.next());
  fuzz::write_bytes(chunkflow::data::bin_path(tokens), sections.next());
  const bool with_mask = sections.has_more();
  if (with_mask) {
    fuzz::write_bytes(chunkflow::data::idx_path(mask), sections.next());
    fuzz::write_bytes(chunkflow::data::bin_path(mask), sections.next());
  } else {
    fuzz::remove_file(chunkflow::data::idx_path(mask));
    fuzz::remove_file(chunkflow::data::bin_path(mask));
  }

  try {
    const IndexedDataset dataset(tokens);
    read_all(dataset);
    if (!with_mask) return 0;
    const LossMaskDataset loss_mask(mask, dataset);
    for (int64_t sequence = 0; sequence < loss_mask.size(); ++sequence) {
      try {
        const std::vector<uint8_t> values = loss_mask.read(sequence);
        require(static_cast<int64_t>(values.size()) == dataset.length(sequence),
                "mask length differs from the token length");
      } catch (const chunkflow::core::Error&) {
        // A mask value other than 0/1: rejected, fine.
      }
    }
  } catch (const chunkflow::core::Error&) {
    // A rejected dataset: the expected outcome for most inputs.
  }
  return 0;
}
