// Every token id of a dataset checked against a vocabulary before training starts: an id past the
// embedding would otherwise stop a run at the step that happens to draw its sequence, hours in.
#pragma once

#include <cstdint>
#include <optional>

#include "data/indexed_dataset.h"

namespace chunkflow::data {

// Where the first out-of-range id lies (lowest sequence index, then position).
struct TokenOutsideVocabulary {
  int64_t sequence = 0;
  int64_t position = 0;
  int64_t id = 0;
};

// Scans every sequence of `dataset` (all hardware threads; a progress line for datasets of more
// than 100M tokens) for an id outside [0, vocab_size). A file whose dtype cannot hold such an id
// (uint8/uint16 with vocab_size above its range) is not read at all. nullopt when every id is
// inside.
std::optional<TokenOutsideVocabulary> first_token_outside_vocabulary(const IndexedDataset& dataset, int64_t vocab_size);

}  // namespace chunkflow::data
