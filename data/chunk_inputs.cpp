// Chunk input gathering; see chunk_inputs.h.
#include "data/chunk_inputs.h"

#include <algorithm>

#include "core/error.h"

namespace chunkflow::data {

ChunkInputs gather_chunk_inputs(const ChunkPlan& plan, int32_t chunk,
                                std::span<const PlanSequence> sequences,
                                const TokenReader& read_tokens) {
  CF_ASSERT(chunk >= 0 && static_cast<size_t>(chunk) < plan.chunks().size(), "chunk ", chunk);
  const Chunk& info = plan.chunks()[static_cast<size_t>(chunk)];
  ChunkInputs inputs;
  inputs.input_ids.reserve(static_cast<size_t>(info.tokens));
  inputs.labels.reserve(static_cast<size_t>(info.tokens));
  inputs.positions.reserve(static_cast<size_t>(info.tokens));
  const auto cu_q = plan.cu_seqlens_q(chunk);
  const auto cu_k = plan.cu_seqlens_k(chunk);
  inputs.cu_seqlens_q.assign(cu_q.begin(), cu_q.end());
  inputs.cu_seqlens_k.assign(cu_k.begin(), cu_k.end());

  std::vector<int32_t> buffer;
  for (const Segment& segment : plan.segments_of(info)) {
    const PlanSequence& sequence = sequences[static_cast<size_t>(segment.sequence)];
    CF_ASSERT(segment.end <= sequence.length, "segment past its sequence");
    // One token past the end supplies the label of the segment's last position.
    const int64_t read_end = std::min(segment.end + 1, sequence.length);
    buffer.resize(static_cast<size_t>(read_end - segment.begin));
    read_tokens(segment.sequence, segment.begin, read_end - segment.begin, buffer.data());
    for (int64_t p = segment.begin; p < segment.end; ++p) {
      inputs.input_ids.push_back(buffer[static_cast<size_t>(p - segment.begin)]);
      inputs.positions.push_back(static_cast<int32_t>(p));
      const int64_t target = p + 1;
      const bool has_label =
          target < sequence.length &&
          (sequence.loss_mask.empty() || sequence.loss_mask[static_cast<size_t>(target)] != 0);
      inputs.labels.push_back(has_label ? buffer[static_cast<size_t>(target - segment.begin)] : kIgnoreLabel);
      inputs.loss_tokens += has_label;
    }
    // Right padding, as a padded Hugging Face batch has it: positions go on, nothing is learned.
    for (int64_t p = segment.end; p < segment.end + segment.padding; ++p) {
      inputs.input_ids.push_back(kPaddingToken);
      inputs.positions.push_back(static_cast<int32_t>(p));
      inputs.labels.push_back(kIgnoreLabel);
    }
    inputs.prefix_lens.push_back(static_cast<int32_t>(segment.prefix_len));
  }
  return inputs;
}

}  // namespace chunkflow::data
