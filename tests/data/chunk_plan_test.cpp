// Chunk construction: exact unit cases plus property tests over thousands of random batches.
#include "data/chunk_plan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

#include "core/error.h"
#include "core/random.h"
#include "data/chunk_inputs.h"

namespace chunkflow::data {
namespace {

std::vector<PlanSequence> plain(const std::vector<int64_t>& lengths) {
  std::vector<PlanSequence> sequences;
  for (const int64_t length : lengths) sequences.push_back(PlanSequence{length, {}});
  return sequences;
}

// Token value of sequence s at position p: any injective-enough function works.
int32_t token_at(int32_t sequence, int64_t position) {
  return static_cast<int32_t>(core::mix64((static_cast<uint64_t>(sequence) << 32) ^ static_cast<uint64_t>(position)) % 100000);
}

TokenReader synthetic_reader() {
  return [](int32_t sequence, int64_t begin, int64_t count, int32_t* out) {
    for (int64_t i = 0; i < count; ++i) out[i] = token_at(sequence, begin + i);
  };
}

TEST(ChunkPlanTest, SplitsLongSequenceIntoOrderedDependentChunks) {
  const auto sequences = plain({10});
  const ChunkPlan plan = build_chunk_plan(sequences, 4);
  ASSERT_EQ(plan.chunks().size(), 3u);
  ASSERT_EQ(plan.groups().size(), 1u);
  EXPECT_EQ(plan.groups()[0].chunk_count, 3);
  for (int32_t c = 0; c < 3; ++c) {
    const auto segments = plan.segments_of(plan.chunks()[static_cast<size_t>(c)]);
    ASSERT_EQ(segments.size(), 1u);
    EXPECT_EQ(segments[0].piece, c);
    EXPECT_EQ(segments[0].begin, 4 * c);
    EXPECT_EQ(segments[0].prefix_len, 4 * c);
    EXPECT_EQ(plan.chunks()[static_cast<size_t>(c)].split_sequence, 0);
  }
  EXPECT_EQ(plan.segments()[2].end, 10);
  // Last chunk: 2 queries over 8 prefix keys + 2 own keys.
  const auto cu_k = plan.cu_seqlens_k(2);
  EXPECT_EQ(std::vector<int32_t>(cu_k.begin(), cu_k.end()), (std::vector<int32_t>{0, 10}));
  // 9 labelled positions in all (the final token has no label), 1 of them in the last chunk.
  EXPECT_EQ(plan.loss_tokens(), 9);
  EXPECT_EQ(plan.segments()[0].loss_tokens, 4);
  EXPECT_EQ(plan.segments()[2].loss_tokens, 1);
  EXPECT_EQ(plan.dependent_chunks(), 3);
  EXPECT_EQ(plan.standalone_chunks(), 0);
}

TEST(ChunkPlanTest, PacksShortSequencesIntoTheTailOfASplitSequence) {
  const auto sequences = plain({10, 2, 3});
  const ChunkPlan plan = build_chunk_plan(sequences, 5);  // 10 = two full pieces, no tail
  EXPECT_EQ(plan.chunks().size(), 3u);
  const auto with_tail = plain({12, 2, 1, 3});
  const ChunkPlan packed = build_chunk_plan(with_tail, 5);  // tail of 2 leaves 3 free
  ASSERT_EQ(packed.chunks().size(), 4u);
  const auto tail_segments = packed.segments_of(packed.chunks()[2]);
  ASSERT_EQ(tail_segments.size(), 2u);
  EXPECT_EQ(tail_segments[0].sequence, 0);
  EXPECT_EQ(tail_segments[1].sequence, 3);  // best fit: the 3-token sequence fills the tail
  EXPECT_EQ(tail_segments[1].prefix_len, 0);
  const auto cu_q = packed.cu_seqlens_q(2);
  const auto cu_k = packed.cu_seqlens_k(2);
  EXPECT_EQ(std::vector<int32_t>(cu_q.begin(), cu_q.end()), (std::vector<int32_t>{0, 2, 5}));
  EXPECT_EQ(std::vector<int32_t>(cu_k.begin(), cu_k.end()), (std::vector<int32_t>{0, 12, 15}));
  // Without tail packing the tail chunk stays alone.
  const ChunkPlan unpacked = build_chunk_plan(with_tail, 5, false);
  EXPECT_EQ(unpacked.segments_of(unpacked.chunks()[2]).size(), 1u);
  EXPECT_EQ(unpacked.chunks().size(), 5u);
}

TEST(ChunkPlanTest, SequenceOfExactlyChunkSizeIsOneStandaloneChunk) {
  const ChunkPlan plan = build_chunk_plan(plain({8}), 8);
  ASSERT_EQ(plan.chunks().size(), 1u);
  EXPECT_EQ(plan.chunks()[0].split_sequence, -1);
  EXPECT_EQ(plan.split_sequences(), 0);
}

TEST(ChunkPlanTest, EmptyAndSingleTokenSequencesBreakNothing) {
  const ChunkPlan plan = build_chunk_plan(plain({0, 1, 0, 1}), 3);
  EXPECT_EQ(plan.empty_sequences(), 2);
  EXPECT_EQ(plan.total_tokens(), 2);
  EXPECT_EQ(plan.loss_tokens(), 0);
  ASSERT_EQ(plan.chunks().size(), 1u);
  EXPECT_EQ(plan.segments().size(), 2u);
  const ChunkPlan nothing = build_chunk_plan(plain({}), 3);
  EXPECT_TRUE(nothing.chunks().empty());
  EXPECT_DOUBLE_EQ(nothing.fill_ratio(), 1.0);
}

TEST(ChunkPlanTest, LossMaskSelectsTargetsAcrossChunkBoundaries) {
  // mask[i] = 1 marks token i as a target; positions 3 and 4 predict tokens 4 and 5.
  const std::vector<uint8_t> mask = {0, 0, 0, 0, 1, 1, 0};
  const std::vector<PlanSequence> sequences = {{7, mask}};
  const ChunkPlan plan = build_chunk_plan(sequences, 4);
  ASSERT_EQ(plan.segments().size(), 2u);
  EXPECT_EQ(plan.segments()[0].loss_tokens, 1);  // position 3 -> token 4 crosses the boundary
  EXPECT_EQ(plan.segments()[1].loss_tokens, 1);  // position 4 -> token 5
  EXPECT_EQ(plan.loss_tokens(), 2);
  const ChunkInputs first = gather_chunk_inputs(plan, 0, sequences, synthetic_reader());
  EXPECT_EQ(first.labels, (std::vector<int32_t>{kIgnoreLabel, kIgnoreLabel, kIgnoreLabel, token_at(0, 4)}));
}

TEST(ChunkPlanTest, RejectsBadInputWithClearMessages) {
  EXPECT_THROW(build_chunk_plan(plain({3}), 0), core::Error);
  try {
    build_chunk_plan(plain({3, -1}), 4);
    FAIL() << "negative length accepted";
  } catch (const core::Error& error) {
    EXPECT_NE(std::string(error.what()).find("sequence 1"), std::string::npos) << error.what();
  }
  const std::vector<uint8_t> short_mask = {1, 1};
  const std::vector<PlanSequence> sequences = {{3, short_mask}};
  EXPECT_THROW(build_chunk_plan(sequences, 4), core::Error);
}

// A batch shaped like fine-tuning data: mostly short, now and then very long.
std::vector<int64_t> random_lengths(core::Rng& rng, int64_t chunk_size) {
  const int64_t count = 1 + static_cast<int64_t>(rng.below(60));
  std::vector<int64_t> lengths;
  for (int64_t i = 0; i < count; ++i) {
    const double draw = rng.uniform();
    if (draw < 0.05) lengths.push_back(static_cast<int64_t>(rng.below(2)));  // 0 or 1
    else if (draw < 0.15) lengths.push_back(static_cast<int64_t>(rng.below(static_cast<uint64_t>(20 * chunk_size + 1))));
    else lengths.push_back(1 + static_cast<int64_t>(rng.below(static_cast<uint64_t>(chunk_size))));
  }
  return lengths;
}

// Checks every invariant of design brief section 3 on one plan.
void check_plan_invariants(const ChunkPlan& plan, const std::vector<PlanSequence>& sequences,
                           bool pack_into_tail) {
  const int64_t chunk_size = plan.chunk_size();
  std::vector<std::vector<const Segment*>> by_sequence(sequences.size());
  int64_t tokens = 0;
  for (size_t c = 0; c < plan.chunks().size(); ++c) {
    const Chunk& chunk = plan.chunks()[c];
    ASSERT_LE(chunk.tokens, chunk_size) << "chunk " << c;
    ASSERT_GT(chunk.segment_count, 0) << "chunk " << c;
    const auto cu_q = plan.cu_seqlens_q(static_cast<int32_t>(c));
    const auto cu_k = plan.cu_seqlens_k(static_cast<int32_t>(c));
    ASSERT_EQ(cu_q[0], 0);
    ASSERT_EQ(cu_k[0], 0);
    int64_t sum = 0, split_pieces = 0;
    const auto segments = plan.segments_of(chunk);
    for (size_t s = 0; s < segments.size(); ++s) {
      const Segment& segment = segments[s];
      ASSERT_GT(segment.length(), 0);
      sum += segment.length();
      ASSERT_EQ(cu_q[s + 1] - cu_q[s], segment.length());
      ASSERT_EQ(cu_k[s + 1] - cu_k[s], segment.prefix_len + segment.length());
      const PlanSequence& sequence = sequences[static_cast<size_t>(segment.sequence)];
      ASSERT_EQ(segment.loss_tokens, count_loss_tokens(sequence, segment.begin, segment.end));
      ASSERT_EQ(segment.prefix_len, segment.begin) << "prefix must hold exactly the earlier tokens";
      if (sequence.length > chunk_size) {
        ++split_pieces;
        ASSERT_EQ(chunk.split_sequence, segment.sequence);
        ASSERT_EQ(segment.begin, segment.piece * chunk_size);
        if (segment.end < sequence.length) {
          ASSERT_EQ(segment.length(), chunk_size) << "a non-final piece fills its chunk";
        } else if (!pack_into_tail) {
          ASSERT_EQ(segments.size(), 1u);
        }
      } else {
        ASSERT_EQ(segment.begin, 0);
        ASSERT_EQ(segment.end, sequence.length) << "short sequences are never cut";
      }
      by_sequence[static_cast<size_t>(segment.sequence)].push_back(&segment);
    }
    ASSERT_LE(split_pieces, 1) << "one split sequence per chunk at most";
    ASSERT_EQ(sum, chunk.tokens);
    tokens += sum;
  }
  ASSERT_EQ(tokens, plan.total_tokens());

  // Every token exactly once; dependent chunks in order and contiguous within one group.
  int64_t expected_loss = 0;
  for (size_t i = 0; i < sequences.size(); ++i) {
    const auto& pieces = by_sequence[i];
    expected_loss += count_loss_tokens(sequences[i], 0, sequences[i].length);
    if (sequences[i].length == 0) {
      ASSERT_TRUE(pieces.empty());
      continue;
    }
    int64_t covered = 0;
    for (size_t p = 0; p < pieces.size(); ++p) {
      ASSERT_EQ(pieces[p]->piece, static_cast<int32_t>(p)) << "pieces out of order, sequence " << i;
      ASSERT_EQ(pieces[p]->begin, covered) << "gap or overlap, sequence " << i;
      covered = pieces[p]->end;
    }
    ASSERT_EQ(covered, sequences[i].length) << "sequence " << i << " truncated";
  }
  ASSERT_EQ(plan.loss_tokens(), expected_loss);

  // Groups tile the chunk list; a split sequence's chunks are all in its group.
  int32_t next_chunk = 0;
  for (size_t g = 0; g < plan.groups().size(); ++g) {
    const ChunkGroup& group = plan.groups()[g];
    ASSERT_EQ(group.first_chunk, next_chunk);
    next_chunk += group.chunk_count;
    if (group.split_sequence < 0) {
      ASSERT_EQ(group.chunk_count, 1);
    }
    for (int32_t c = group.first_chunk; c < group.first_chunk + group.chunk_count; ++c) {
      ASSERT_EQ(plan.chunks()[static_cast<size_t>(c)].group, static_cast<int32_t>(g));
      ASSERT_EQ(plan.chunks()[static_cast<size_t>(c)].split_sequence, group.split_sequence);
    }
  }
  ASSERT_EQ(next_chunk, static_cast<int32_t>(plan.chunks().size()));

  // Any-fit property of best-fit packing: a standalone chunk is opened only when its largest
  // (first) sequence fits in no earlier packing bin, and free space only shrinks afterwards.
  std::vector<int64_t> free_of_earlier_bins;
  for (const Chunk& chunk : plan.chunks()) {
    const bool is_tail_bin = chunk.split_sequence >= 0 && pack_into_tail &&
                             plan.segments_of(chunk)[0].end == sequences[static_cast<size_t>(chunk.split_sequence)].length &&
                             plan.segments_of(chunk)[0].length() < chunk_size;
    if (is_tail_bin) free_of_earlier_bins.push_back(chunk_size - chunk.tokens);
  }
  for (const Chunk& chunk : plan.chunks()) {
    if (chunk.split_sequence >= 0) continue;
    const int64_t first = plan.segments_of(chunk)[0].length();
    for (const int64_t free_tokens : free_of_earlier_bins) ASSERT_LT(free_tokens, first);
    free_of_earlier_bins.push_back(chunk_size - chunk.tokens);
  }
}

TEST(ChunkPlanPropertyTest, InvariantsHoldOverThousandsOfRandomBatches) {
  core::Rng rng(20261128);
  const std::vector<int64_t> chunk_sizes = {1, 2, 7, 64, 100, 513};
  int64_t batches = 0;
  for (const int64_t chunk_size : chunk_sizes) {
    for (int trial = 0; trial < 500; ++trial) {
      const auto lengths = random_lengths(rng, chunk_size);
      std::vector<std::vector<uint8_t>> masks(lengths.size());
      std::vector<PlanSequence> sequences;
      for (size_t i = 0; i < lengths.size(); ++i) {
        if (rng.uniform() < 0.3) {
          masks[i].resize(static_cast<size_t>(lengths[i]));
          for (auto& bit : masks[i]) bit = rng.uniform() < 0.5;
        }
        sequences.push_back(PlanSequence{lengths[i], masks[i]});
      }
      const bool pack_into_tail = trial % 4 != 0;
      const ChunkPlan plan = build_chunk_plan(sequences, chunk_size, pack_into_tail);
      check_plan_invariants(plan, sequences, pack_into_tail);
      if (HasFatalFailure()) {
        ADD_FAILURE() << "chunk_size " << chunk_size << " trial " << trial << "\n" << plan.describe(50);
        return;
      }
      ++batches;
    }
  }
  EXPECT_EQ(batches, 3000);
}

TEST(ChunkPlanPropertyTest, LabelsAreTheNextTokensOfTheOriginalSequences) {
  core::Rng rng(7);
  for (const int64_t chunk_size : {7, 100}) {
    for (int trial = 0; trial < 200; ++trial) {
      const auto lengths = random_lengths(rng, chunk_size);
      std::vector<std::vector<uint8_t>> masks(lengths.size());
      std::vector<PlanSequence> sequences;
      for (size_t i = 0; i < lengths.size(); ++i) {
        if (i % 2 == 1) {
          masks[i].resize(static_cast<size_t>(lengths[i]));
          for (auto& bit : masks[i]) bit = rng.uniform() < 0.7;
        }
        sequences.push_back(PlanSequence{lengths[i], masks[i]});
      }
      const ChunkPlan plan = build_chunk_plan(sequences, chunk_size);
      int64_t loss_tokens = 0;
      for (int32_t c = 0; c < static_cast<int32_t>(plan.chunks().size()); ++c) {
        const ChunkInputs inputs = gather_chunk_inputs(plan, c, sequences, synthetic_reader());
        size_t offset = 0;
        for (const Segment& segment : plan.segments_of(plan.chunks()[static_cast<size_t>(c)])) {
          const PlanSequence& sequence = sequences[static_cast<size_t>(segment.sequence)];
          for (int64_t p = segment.begin; p < segment.end; ++p, ++offset) {
            ASSERT_EQ(inputs.input_ids[offset], token_at(segment.sequence, p));
            ASSERT_EQ(inputs.positions[offset], p);
            const bool labelled = p + 1 < sequence.length &&
                                  (sequence.loss_mask.empty() || sequence.loss_mask[static_cast<size_t>(p + 1)]);
            ASSERT_EQ(inputs.labels[offset], labelled ? token_at(segment.sequence, p + 1) : kIgnoreLabel)
                << "sequence " << segment.sequence << " position " << p;
          }
        }
        ASSERT_EQ(offset, inputs.input_ids.size());
        loss_tokens += inputs.loss_tokens;
      }
      ASSERT_EQ(loss_tokens, plan.loss_tokens());
    }
  }
}

TEST(ChunkPlanPropertyTest, ChunkCountStaysCloseToTheLowerBoundOnLongTailBatches) {
  // Long-tail batches (many short sequences, a few long ones): report how far best-fit
  // decreasing lands from ceil(total_tokens / chunk_size).
  core::Rng rng(99);
  double worst_ratio = 1.0, sum_ratio = 0.0;
  int64_t worst_gap = 0;
  const int trials = 300;
  for (int trial = 0; trial < trials; ++trial) {
    const int64_t chunk_size = trial % 2 ? 1000 : 4096;
    std::vector<int64_t> lengths;
    for (int i = 0; i < 400; ++i) {
      const double body = std::exp(std::log(200.0) + 1.1 * rng.normal());
      lengths.push_back(std::max<int64_t>(1, static_cast<int64_t>(body)));
    }
    for (int i = 0; i < 3; ++i) lengths.push_back(static_cast<int64_t>(rng.below(static_cast<uint64_t>(40 * chunk_size))));
    const auto sequences = plain(lengths);
    const ChunkPlan plan = build_chunk_plan(sequences, chunk_size);
    const double ratio = static_cast<double>(plan.chunks().size()) / static_cast<double>(plan.chunk_lower_bound());
    worst_ratio = std::max(worst_ratio, ratio);
    worst_gap = std::max<int64_t>(worst_gap, static_cast<int64_t>(plan.chunks().size()) - plan.chunk_lower_bound());
    sum_ratio += ratio;
  }
  std::printf("chunks / lower bound over %d long-tail batches: mean %.4f, worst %.4f (worst gap %lld chunks)\n",
              trials, sum_ratio / trials, worst_ratio, static_cast<long long>(worst_gap));
  EXPECT_LE(worst_ratio, 1.05);
  EXPECT_LE(worst_gap, 2);
}

TEST(PaddedPlanTest, MicroBatchesOfConsecutiveSequencesPaddedToTheirLongest) {
  // Micro-batches of 2: {5, 3}, {0, 7}, {2}. The empty sequence takes a slot but no row.
  const auto sequences = plain({5, 3, 0, 7, 2});
  const ChunkPlan plan = build_padded_plan(sequences, 2);
  ASSERT_TRUE(plan.padded());
  ASSERT_EQ(plan.chunks().size(), 3u);
  ASSERT_EQ(plan.groups().size(), 3u);
  EXPECT_EQ(plan.chunks()[0].tokens, 10);
  EXPECT_EQ(plan.chunks()[0].padding_tokens, 2);
  EXPECT_EQ(plan.chunks()[1].tokens, 7);
  EXPECT_EQ(plan.chunks()[1].padding_tokens, 0);
  EXPECT_EQ(plan.chunks()[2].tokens, 2);
  EXPECT_EQ(plan.chunk_size(), 10);
  EXPECT_EQ(plan.split_sequences(), 0);
  EXPECT_EQ(plan.empty_sequences(), 1);
  EXPECT_EQ(plan.total_tokens(), 17);
  EXPECT_EQ(plan.padding_tokens(), 2);
  EXPECT_DOUBLE_EQ(plan.fill_ratio(), 17.0 / 19.0);
  EXPECT_EQ(plan.loss_tokens(), 4 + 2 + 6 + 1);
  const auto cu_q = plan.cu_seqlens_q(0);
  EXPECT_EQ(std::vector<int32_t>(cu_q.begin(), cu_q.end()), (std::vector<int32_t>{0, 5, 10}));
  const auto cu_k = plan.cu_seqlens_k(0);
  EXPECT_EQ(std::vector<int32_t>(cu_k.begin(), cu_k.end()), (std::vector<int32_t>{0, 5, 10}));
  for (const ChunkGroup& group : plan.groups()) EXPECT_EQ(group.split_sequence, -1);
  // Causal entries of the padded rows: each row attends to its padded segment.
  EXPECT_EQ(plan.groups()[0].attention_entries, 2 * attention_entries(5, 0));
}

TEST(PaddedPlanTest, PaddingRowsCarryNoLabelAndContinueThePositions) {
  const std::vector<uint8_t> mask = {0, 1, 1};
  const std::vector<PlanSequence> sequences = {{2, {}}, {3, mask}, {5, {}}};
  const ChunkPlan plan = build_padded_plan(sequences, 3);
  ASSERT_EQ(plan.chunks().size(), 1u);
  const ChunkInputs inputs = gather_chunk_inputs(plan, 0, sequences, synthetic_reader());
  ASSERT_EQ(inputs.input_ids.size(), 15u);
  // Sequence 0: two real rows then three padding rows.
  EXPECT_EQ(inputs.input_ids[0], token_at(0, 0));
  EXPECT_EQ(inputs.labels[0], token_at(0, 1));
  EXPECT_EQ(inputs.labels[1], kIgnoreLabel);  // last real token: nothing follows
  for (size_t row = 2; row < 5; ++row) {
    EXPECT_EQ(inputs.input_ids[row], kPaddingToken);
    EXPECT_EQ(inputs.labels[row], kIgnoreLabel);
    EXPECT_EQ(inputs.positions[row], static_cast<int32_t>(row));
  }
  // Sequence 1 starts at row 5 with its own positions.
  EXPECT_EQ(inputs.positions[5], 0);
  EXPECT_EQ(inputs.labels[5], token_at(1, 1));
  EXPECT_EQ(inputs.loss_tokens, plan.loss_tokens());
  EXPECT_EQ(inputs.loss_tokens, 1 + 2 + 4);
  EXPECT_EQ(inputs.cu_seqlens_q, (std::vector<int32_t>{0, 5, 10, 15}));
}

TEST(PaddedPlanTest, EveryTokenLandsOnceOverRandomBatches) {
  core::Rng rng(11);
  for (int trial = 0; trial < 500; ++trial) {
    const auto lengths = random_lengths(rng, 40);
    const auto sequences = plain(lengths);
    const int64_t micro_batch = 1 + static_cast<int64_t>(rng.below(6));
    const ChunkPlan plan = build_padded_plan(sequences, micro_batch);
    std::vector<int64_t> seen(lengths.size(), 0);
    int64_t padding = 0;
    for (const Chunk& chunk : plan.chunks()) {
      int64_t rows = 0, longest = 0;
      for (const Segment& segment : plan.segments_of(chunk)) {
        EXPECT_EQ(segment.begin, 0);
        seen[static_cast<size_t>(segment.sequence)] += segment.length();
        longest = std::max(longest, segment.padded_length());
        rows += segment.padded_length();
        padding += segment.padding;
      }
      for (const Segment& segment : plan.segments_of(chunk)) EXPECT_EQ(segment.padded_length(), longest);
      EXPECT_EQ(chunk.tokens, rows);
      EXPECT_LE(chunk.segment_count, micro_batch);
    }
    for (size_t s = 0; s < lengths.size(); ++s) ASSERT_EQ(seen[s], lengths[s]) << "trial " << trial << " sequence " << s;
    EXPECT_EQ(plan.padding_tokens(), padding);
  }
  EXPECT_THROW(build_padded_plan(plain({3}), 0), core::Error);
  EXPECT_THROW(build_padded_plan(plain({3, -2}), 2), core::Error);
}

TEST(ChunkPlanTest, IsDeterministic) {
  core::Rng rng(3);
  const auto sequences = plain(random_lengths(rng, 50));
  const ChunkPlan first = build_chunk_plan(sequences, 50);
  const ChunkPlan second = build_chunk_plan(sequences, 50);
  EXPECT_EQ(first.describe(1000), second.describe(1000));
}

}  // namespace
}  // namespace chunkflow::data
