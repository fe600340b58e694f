// Chunk construction: split, then best-fit-decreasing packing. See chunk_plan.h.
#include "data/chunk_plan.h"

#include <algorithm>
#include <limits>
#include <map>

#include "core/error.h"
#include "core/strings.h"

namespace chunkflow::data {
int64_t attention_entries(int64_t length, int64_t prefix_len) {
  return length * prefix_len + length * (length + 1) / 2;
}

namespace {

// Free space of open bins, kept so that the best fit (smallest free space that still holds an
// item) is one ordered lookup. Bins of equal free space are used last-opened first.
class OpenBins {
 public:
  void add(int64_t free_tokens, int32_t bin) {
    if (free_tokens > 0) by_free_[free_tokens].push_back(bin);
  }
  // Takes the best-fitting bin for `tokens`, or returns -1 when none has room. The caller re-adds
  // the bin with its remaining space.
  int32_t take_best_fit(int64_t tokens, int64_t* free_tokens) {
    auto it = by_free_.lower_bound(tokens);
    if (it == by_free_.end()) return -1;
    const int32_t bin = it->second.back();
    *free_tokens = it->first;
    it->second.pop_back();
    if (it->second.empty()) by_free_.erase(it);
    return bin;
  }

 private:
  std::map<int64_t, std::vector<int32_t>> by_free_;
};

// The rules every plan builder applies to its input; returns the sequence's length.
int64_t checked_length(std::span<const PlanSequence> sequences, size_t index) {
  const PlanSequence& sequence = sequences[index];
  CF_CHECK(sequence.length >= 0, "sequence ", index, " of the batch has negative length ",
           sequence.length);
  CF_CHECK(sequence.length < std::numeric_limits<int32_t>::max(), "sequence ", index,
           " has length ", sequence.length, "; at most 2^31-1 tokens are supported (int32 cu_seqlens)");
  CF_CHECK(sequence.loss_mask.empty() || static_cast<int64_t>(sequence.loss_mask.size()) == sequence.length,
           "sequence ", index, " has length ", sequence.length, " but a loss mask of ",
           sequence.loss_mask.size(), " entries");
  return sequence.length;
}

}  // namespace

int64_t count_loss_tokens(const PlanSequence& sequence, int64_t begin, int64_t end) {
  // Position p carries the label of token p + 1; the labels of [begin, end) are tokens
  // [begin + 1, min(end + 1, length)).
  const int64_t first_label = begin + 1;
  const int64_t label_end = std::min(end + 1, sequence.length);
  if (label_end <= first_label) return 0;
  if (sequence.loss_mask.empty()) return label_end - first_label;
  int64_t count = 0;
  for (int64_t q = first_label; q < label_end; ++q) count += sequence.loss_mask[static_cast<size_t>(q)] != 0;
  return count;
}

ChunkPlan build_chunk_plan(std::span<const PlanSequence> sequences, int64_t chunk_size,
                           bool pack_into_tail) {
  CF_CHECK(chunk_size > 0, "chunking.chunk_size must be > 0, got ", chunk_size);
  CF_CHECK(sequences.size() < static_cast<size_t>(std::numeric_limits<int32_t>::max()),
           "a global batch holds at most 2^31-1 sequences, got ", sequences.size());

  ChunkPlan plan;
  plan.chunk_size_ = chunk_size;
  plan.sequence_count_ = static_cast<int64_t>(sequences.size());

  // Pass 1: validate, split long sequences, collect short ones keyed for a descending sort.
  // Bins are the chunks that can still take packed sequences: tails of split sequences (when
  // allowed) and the standalone chunks opened while packing.
  struct Bin {
    int32_t split_sequence;  // -1: standalone
  };
  std::vector<Bin> bins;
  std::vector<int32_t> tail_bin_of_split;  // per split sequence, its tail bin or -1
  std::vector<int32_t> split_order;        // split sequences by batch index
  std::vector<uint64_t> short_keys;        // (chunk_size - length) << 32 | sequence
  OpenBins open_bins;
  for (size_t index = 0; index < sequences.size(); ++index) {
    const PlanSequence& sequence = sequences[index];
    checked_length(sequences, index);
    plan.total_tokens_ += sequence.length;
    if (sequence.length == 0) {
      ++plan.empty_sequences_;
    } else if (sequence.length > chunk_size) {
      split_order.push_back(static_cast<int32_t>(index));
      const int64_t tail = sequence.length % chunk_size;
      int32_t tail_bin = -1;
      if (tail > 0 && pack_into_tail) {
        tail_bin = static_cast<int32_t>(bins.size());
        bins.push_back(Bin{static_cast<int32_t>(index)});
        open_bins.add(chunk_size - tail, tail_bin);
      }
      tail_bin_of_split.push_back(tail_bin);
    } else {
      short_keys.push_back((static_cast<uint64_t>(chunk_size - sequence.length) << 32) |
                           static_cast<uint64_t>(index));
    }
  }
  plan.split_sequences_ = static_cast<int64_t>(split_order.size());

  // Pass 2: best-fit decreasing. Ties in length keep batch order, so the plan is deterministic.
  std::sort(short_keys.begin(), short_keys.end());
  std::vector<int32_t> bin_of_short(short_keys.size());
  for (size_t rank = 0; rank < short_keys.size(); ++rank) {
    const int64_t length = sequences[short_keys[rank] & 0xffffffffu].length;
    int64_t free_tokens = 0;
    int32_t bin = open_bins.take_best_fit(length, &free_tokens);
    if (bin < 0) {
      bin = static_cast<int32_t>(bins.size());
      bins.push_back(Bin{-1});
      free_tokens = chunk_size;
    }
    bin_of_short[rank] = bin;
    open_bins.add(free_tokens - length, bin);
  }

  // Members of each bin, in placement order (longest first), by counting sort.
  std::vector<int32_t> member_start(bins.size() + 1, 0);
  for (const int32_t bin : bin_of_short) ++member_start[static_cast<size_t>(bin) + 1];
  for (size_t bin = 0; bin < bins.size(); ++bin) member_start[bin + 1] += member_start[bin];
  std::vector<int32_t> members(short_keys.size());
  {
    std::vector<int32_t> cursor(member_start.begin(), member_start.end() - 1);
    for (size_t rank = 0; rank < short_keys.size(); ++rank) {
      members[static_cast<size_t>(cursor[static_cast<size_t>(bin_of_short[rank])]++)] =
          static_cast<int32_t>(short_keys[rank] & 0xffffffffu);
    }
  }

  // Pass 3: emit chunks group by group: split sequences first (pieces in order, packed
  // sequences in the tail chunk after the piece), then standalone chunks.
  plan.chunks_.reserve(static_cast<size_t>(plan.chunk_lower_bound()) + bins.size());
  plan.segments_.reserve(sequences.size() + split_order.size() * 2);
  ChunkGroup* group = nullptr;
  auto open_group = [&](int32_t split_sequence) {
    plan.groups_.push_back(ChunkGroup{static_cast<int32_t>(plan.chunks_.size()), 0, split_sequence, 0, 0});
    group = &plan.groups_.back();
  };
  auto open_chunk = [&](int32_t split_sequence) {
    plan.chunks_.push_back(Chunk{static_cast<int32_t>(plan.segments_.size()), 0, 0, 0, split_sequence,
                                 static_cast<int32_t>(plan.groups_.size() - 1)});
    ++group->chunk_count;
  };
  auto add_segment = [&](int32_t sequence, int32_t piece, int64_t begin, int64_t end, int64_t prefix_len) {
    const Segment segment{sequence, piece, begin, end, prefix_len,
                          count_loss_tokens(sequences[static_cast<size_t>(sequence)], begin, end)};
    plan.segments_.push_back(segment);
    Chunk& chunk = plan.chunks_.back();
    ++chunk.segment_count;
    chunk.tokens += segment.length();
    group->tokens += segment.length();
    group->attention_entries += attention_entries(segment.length(), prefix_len);
    plan.loss_tokens_ += segment.loss_tokens;
  };
  auto add_members = [&](int32_t bin) {
    for (int32_t m = member_start[static_cast<size_t>(bin)]; m < member_start[static_cast<size_t>(bin) + 1]; ++m) {
      const int32_t sequence = members[static_cast<size_t>(m)];
      add_segment(sequence, 0, 0, sequences[static_cast<size_t>(sequence)].length, 0);
    }
  };

  for (size_t split = 0; split < split_order.size(); ++split) {
    const int32_t sequence = split_order[split];
    const int64_t length = sequences[static_cast<size_t>(sequence)].length;
    open_group(sequence);
    int32_t piece = 0;
    for (int64_t begin = 0; begin < length; begin += chunk_size, ++piece) {
      open_chunk(sequence);
      add_segment(sequence, piece, begin, std::min(begin + chunk_size, length), begin);
    }
    if (tail_bin_of_split[split] >= 0) add_members(tail_bin_of_split[split]);
  }
  for (size_t bin = 0; bin < bins.size(); ++bin) {
    if (bins[bin].split_sequence >= 0) continue;
    open_group(-1);
    open_chunk(-1);
    add_members(static_cast<int32_t>(bin));
  }

  plan.fill_cu_seqlens();
  return plan;
}

ChunkPlan build_padded_plan(std::span<const PlanSequence> sequences, int64_t micro_batch_sequences) {
  CF_CHECK(micro_batch_sequences >= 1, "chunking.micro_batch_sequences must be >= 1, got ", micro_batch_sequences);
  CF_CHECK(sequences.size() < static_cast<size_t>(std::numeric_limits<int32_t>::max()),
           "a global batch holds at most 2^31-1 sequences, got ", sequences.size());
  ChunkPlan plan;
  plan.padded_ = true;
  plan.sequence_count_ = static_cast<int64_t>(sequences.size());
  for (size_t first = 0; first < sequences.size(); first += static_cast<size_t>(micro_batch_sequences)) {
    const size_t end = std::min(sequences.size(), first + static_cast<size_t>(micro_batch_sequences));
    int64_t longest = 0;
    for (size_t index = first; index < end; ++index) {
      longest = std::max(longest, checked_length(sequences, index));
      plan.total_tokens_ += sequences[index].length;
      plan.empty_sequences_ += sequences[index].length == 0;
    }
    if (longest == 0) continue;
    const int32_t chunk_index = static_cast<int32_t>(plan.chunks_.size());
    const int32_t group_index = static_cast<int32_t>(plan.groups_.size());
    Chunk chunk{static_cast<int32_t>(plan.segments_.size()), 0, 0, 0, -1, group_index};
    ChunkGroup group{chunk_index, 1, -1, 0, 0};
    for (size_t index = first; index < end; ++index) {
      const PlanSequence& sequence = sequences[index];
      if (sequence.length == 0) continue;
      Segment segment{static_cast<int32_t>(index), 0, 0, sequence.length, 0,
                      count_loss_tokens(sequence, 0, sequence.length), longest - sequence.length};
      plan.segments_.push_back(segment);
      ++chunk.segment_count;
      chunk.tokens += segment.padded_length();
      chunk.padding_tokens += segment.padding;
      group.attention_entries += attention_entries(segment.padded_length(), 0);
      plan.loss_tokens_ += segment.loss_tokens;
    }
    group.tokens = chunk.tokens;
    plan.padding_tokens_ += chunk.padding_tokens;
    plan.chunk_size_ = std::max(plan.chunk_size_, chunk.tokens);
    plan.chunks_.push_back(chunk);
    plan.groups_.push_back(group);
  }
  plan.chunk_size_ = std::max<int64_t>(plan.chunk_size_, 1);
  plan.fill_cu_seqlens();
  return plan;
}

void ChunkPlan::fill_cu_seqlens() {
  // Stored flat: chunk c owns segment_count + 1 entries from first_segment + c.
  cu_seqlens_q_.resize(segments_.size() + chunks_.size());
  cu_seqlens_k_.resize(cu_seqlens_q_.size());
  for (size_t c = 0; c < chunks_.size(); ++c) {
    const Chunk& chunk = chunks_[c];
    const size_t base = static_cast<size_t>(chunk.first_segment) + c;
    int64_t q = 0, k = 0;
    cu_seqlens_q_[base] = 0;
    cu_seqlens_k_[base] = 0;
    for (int32_t s = 0; s < chunk.segment_count; ++s) {
      const Segment& segment = segments_[static_cast<size_t>(chunk.first_segment + s)];
      q += segment.padded_length();
      k += segment.key_length();
      CF_CHECK(q <= std::numeric_limits<int32_t>::max() && k <= std::numeric_limits<int32_t>::max(), "chunk ", c,
               " holds or attends to more than 2^31-1 rows; use a smaller chunking.chunk_size"
               " (or chunking.micro_batch_sequences)");
      cu_seqlens_q_[base + static_cast<size_t>(s) + 1] = static_cast<int32_t>(q);
      cu_seqlens_k_[base + static_cast<size_t>(s) + 1] = static_cast<int32_t>(k);
    }
  }
}

std::span<const int32_t> ChunkPlan::cu_seqlens_q(int32_t chunk) const {
  const Chunk& c = chunks_.at(static_cast<size_t>(chunk));
  return {cu_seqlens_q_.data() + c.first_segment + chunk, static_cast<size_t>(c.segment_count) + 1};
}

std::span<const int32_t> ChunkPlan::cu_seqlens_k(int32_t chunk) const {
  const Chunk& c = chunks_.at(static_cast<size_t>(chunk));
  return {cu_seqlens_k_.data() + c.first_segment + chunk, static_cast<size_t>(c.segment_count) + 1};
}

int64_t ChunkPlan::standalone_chunks() const {
  int64_t count = 0;
  for (const Chunk& chunk : chunks_) count += chunk.split_sequence < 0;
  return count;
}

int64_t ChunkPlan::chunk_lower_bound() const {
  return (total_tokens_ + chunk_size_ - 1) / chunk_size_;
}

double ChunkPlan::fill_ratio() const {
  if (chunks_.empty()) return 1.0;
  if (padded_) return static_cast<double>(total_tokens_) / static_cast<double>(total_tokens_ + padding_tokens_);
  return static_cast<double>(total_tokens_) /
         (static_cast<double>(chunks_.size()) * static_cast<double>(chunk_size_));
}

std::string ChunkPlan::describe(int64_t max_chunks) const {
  std::string text = core::str_cat(
      "chunk plan: ", sequence_count_, " sequences (", split_sequences_, " split, ", empty_sequences_,
      " empty), ", total_tokens_, " tokens, ", loss_tokens_, " loss tokens -> ", chunks_.size(),
      " chunks of ", chunk_size_, " (lower bound ", chunk_lower_bound(), ", ", standalone_chunks(),
      " standalone, ", dependent_chunks(), " dependent), fill ", core::format_fixed(100 * fill_ratio(), 1),
      "%\n");
  for (size_t c = 0; c < chunks_.size() && static_cast<int64_t>(c) < max_chunks; ++c) {
    const Chunk& chunk = chunks_[c];
    text += core::str_cat("  chunk ", c, " group ", chunk.group, " tokens ", chunk.tokens,
                          chunk.padding_tokens > 0 ? core::str_cat(" (", chunk.padding_tokens, " padding)") : "",
                          chunk.split_sequence >= 0 ? " dependent:" : " standalone:");
    for (const Segment& segment : segments_of(chunk)) {
      text += core::str_cat(" [seq ", segment.sequence, " piece ", segment.piece, " tokens ",
                            segment.begin, "..", segment.end, " prefix ", segment.prefix_len, "]");
    }
    text += "\n";
  }
  if (static_cast<int64_t>(chunks_.size()) > max_chunks) {
    text += core::str_cat("  ... ", static_cast<int64_t>(chunks_.size()) - max_chunks, " more chunks\n");
  }
  return text;
}

}  // namespace chunkflow::data
