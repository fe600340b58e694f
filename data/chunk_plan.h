// Chunk construction (design brief section 3, the paper's Algorithm 1): a global batch of
// sequences -> a ChunkPlan of uniform chunks. Sequences longer than chunk_size are split into
// ordered dependent chunks; the rest are bin-packed best-fit-decreasing, optionally into the free
// tail of a split sequence's last chunk. Computed from lengths and loss masks only, so every rank
// derives the same plan and the step's loss-token count is known before any tensor math.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace chunkflow::data {

// One sequence of a global batch, as the planner sees it.
struct PlanSequence {
  int64_t length = 0;
  // [length] of 0/1, or empty. loss_mask[i] == 1: token i is a prediction target (predicted from
  // tokens [0, i)); empty: every token but the first is a target. The view must outlive the call.
  std::span<const uint8_t> loss_mask;
};

// A contiguous run of one sequence's tokens placed in one chunk.
struct Segment {
  int32_t sequence = 0;      // index into the batch passed to build_chunk_plan
  int32_t piece = 0;         // this segment's chunk index within its sequence (0 unless split)
  int64_t begin = 0;         // first token, also the rotary position of that token
  int64_t end = 0;           // one past the last token
  int64_t prefix_len = 0;    // tokens of this sequence held as K/V state from earlier chunks
  int64_t loss_tokens = 0;   // positions p in [begin, end) whose label token p + 1 is a target
  // Padding rows after `end` in the same attention segment (pad_to_longest plans only): they run
  // through the model and attend to the segment, carry no loss, and no real token sees them.
  int64_t padding = 0;

  int64_t length() const { return end - begin; }                 // real tokens
  int64_t padded_length() const { return length() + padding; }  // rows the model runs
  // Keys this segment attends to: prefix plus its own rows.
  int64_t key_length() const { return prefix_len + padded_length(); }
};

// One chunk: at most chunk_size tokens, segments laid out back to back.
struct Chunk {
  int32_t first_segment = 0;  // into ChunkPlan::segments()
  int32_t segment_count = 0;
  int64_t tokens = 0;          // rows the model runs, padding included
  int64_t padding_tokens = 0;  // of which padding (pad_to_longest plans)
  // Batch index of the split sequence this chunk holds a piece of, or -1 for a standalone chunk
  // (only whole short sequences, no K/V state).
  int32_t split_sequence = -1;
  int32_t group = 0;
};

// The unit handed to a data-parallel rank: one standalone chunk, or all chunks of one split
// sequence in dependency order (its K/V state lives on that rank). Chunks of a group are
// contiguous in ChunkPlan::chunks().
struct ChunkGroup {
  int32_t first_chunk = 0;
  int32_t chunk_count = 0;
  int32_t split_sequence = -1;  // as in Chunk
  int64_t tokens = 0;
  // Causal attention score entries over all segments: sum of
  // length x prefix_len + length x (length + 1) / 2. The quadratic term of the balancing cost.
  int64_t attention_entries = 0;
};

class ChunkPlan {
 public:
  int64_t chunk_size() const { return chunk_size_; }
  const std::vector<Chunk>& chunks() const { return chunks_; }
  const std::vector<Segment>& segments() const { return segments_; }
  const std::vector<ChunkGroup>& groups() const { return groups_; }

  std::span<const Segment> segments_of(const Chunk& chunk) const {
    return {segments_.data() + chunk.first_segment, static_cast<size_t>(chunk.segment_count)};
  }
  // int32 [segment_count + 1]: cumulative query lengths of the chunk's segments (varlen layout).
  std::span<const int32_t> cu_seqlens_q(int32_t chunk) const;
  // int32 [segment_count + 1]: cumulative key lengths, each segment's prefix included.
  std::span<const int32_t> cu_seqlens_k(int32_t chunk) const;

  int64_t sequence_count() const { return sequence_count_; }
  int64_t empty_sequences() const { return empty_sequences_; }
  int64_t total_tokens() const { return total_tokens_; }
  // Loss tokens of the whole batch: the divisor of the step's summed cross-entropy.
  int64_t loss_tokens() const { return loss_tokens_; }
  int64_t split_sequences() const { return split_sequences_; }
  // Padding rows over all chunks (0 unless built by build_padded_plan).
  int64_t padding_tokens() const { return padding_tokens_; }
  bool padded() const { return padded_; }
  int64_t standalone_chunks() const;
  int64_t dependent_chunks() const { return static_cast<int64_t>(chunks_.size()) - standalone_chunks(); }
  // ceil(total_tokens / chunk_size): no plan can use fewer chunks.
  int64_t chunk_lower_bound() const;
  // Real tokens / (chunks x chunk_size); for a padded plan, real tokens / rows run (padding included).
  double fill_ratio() const;

  // Human-readable dump for debugging and `chunkflow-data stats --show-plan`.
  std::string describe(int64_t max_chunks = 20) const;

 private:
  friend ChunkPlan build_chunk_plan(std::span<const PlanSequence>, int64_t, bool);
  friend ChunkPlan build_padded_plan(std::span<const PlanSequence>, int64_t);
  void fill_cu_seqlens();
  int64_t chunk_size_ = 0;
  std::vector<Chunk> chunks_;
  std::vector<Segment> segments_;
  std::vector<ChunkGroup> groups_;
  // Per chunk c: segment_count + 1 entries starting at chunks_[c].first_segment + c.
  std::vector<int32_t> cu_seqlens_q_, cu_seqlens_k_;
  int64_t sequence_count_ = 0, empty_sequences_ = 0, total_tokens_ = 0, loss_tokens_ = 0,
          split_sequences_ = 0, padding_tokens_ = 0;
  bool padded_ = false;
};

// Builds the plan. chunk_size > 0 and every length >= 0 (else core::Error naming the sequence);
// a non-empty loss_mask must have exactly `length` entries. Nothing is dropped or truncated:
// every token of every sequence lands in exactly one segment. With pack_into_tail, short
// sequences may fill the free space of a split sequence's last chunk. Deterministic.
ChunkPlan build_chunk_plan(std::span<const PlanSequence> sequences, int64_t chunk_size,
                           bool pack_into_tail = true);

// The pad-to-longest baseline (a plain Hugging Face training loop): consecutive runs of
// `micro_batch_sequences` sequences in batch order, each run one standalone chunk (one group) in
// which every sequence is padded to the run's longest. Empty sequences are skipped (they carry no
// token); nothing is split. chunk_size() is the largest chunk's rows. Same validation as
// build_chunk_plan; micro_batch_sequences >= 1.
ChunkPlan build_padded_plan(std::span<const PlanSequence> sequences, int64_t micro_batch_sequences);

// Causal score entries of a segment with `length` queries over `prefix_len + length` keys.
int64_t attention_entries(int64_t length, int64_t prefix_len);

// Loss tokens among positions [begin, end) of a sequence: positions p whose label p + 1 < length
// is a target under `loss_mask` (see PlanSequence).

int64_t count_loss_tokens(const PlanSequence& sequence, int64_t begin, int64_t end);

}  // namespace chunkflow::data
