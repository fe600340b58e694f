// Gathers the flat model inputs of one planned chunk: token ids, next-token labels taken from the
// original sequences (across chunk boundaries), rotary positions and the varlen offsets.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "data/chunk_plan.h"

namespace chunkflow::data {

// Label value of a position that carries no loss (Hugging Face's ignore index).
inline constexpr int32_t kIgnoreLabel = -100;
// Token id of padding rows (pad_to_longest plans): they carry kIgnoreLabel and positions that
// continue their segment's, and no real token attends to them, so the id does not matter.
inline constexpr int32_t kPaddingToken = 0;

// Reads tokens [begin, begin + count) of batch sequence `sequence` into `out` (int32 ids).
using TokenReader = std::function<void(int32_t sequence, int64_t begin, int64_t count, int32_t* out)>;

struct ChunkInputs {
  std::vector<int32_t> input_ids;     // [tokens]
  std::vector<int32_t> labels;        // [tokens]: next token of the original sequence, or kIgnoreLabel
  std::vector<int32_t> positions;     // [tokens]: position within the original sequence
  std::vector<int32_t> cu_seqlens_q;  // [segments + 1]
  std::vector<int32_t> cu_seqlens_k;  // [segments + 1], prefixes included
  std::vector<int32_t> prefix_lens;   // [segments]
  int64_t loss_tokens = 0;            // labels != kIgnoreLabel
};

// `sequences` must be the batch the plan was built from. Reads each segment plus one token past
// its end (the label of its last position) through `read_tokens`.
ChunkInputs gather_chunk_inputs(const ChunkPlan& plan, int32_t chunk,
                                std::span<const PlanSequence> sequences,
                                const TokenReader& read_tokens);

}  // namespace chunkflow::data
