// Context parallelism (design brief section 7): the tokens of every chunk are split over the cp
// ranks of a group, and attention stays exact by all-gathering K/V inside every layer.
//
// Causal balance: each segment of the chunk (a packed sequence, or the piece of a split one) is
// cut into 2 x cp pieces of as-equal-as-possible length and rank r takes pieces r and 2cp-1-r, so
// every rank holds one early (cheap) and one late (expensive) piece of every segment. Pieces may
// be empty, so no sequence is ever padded to a multiple of 2 x cp. A rank's query pieces then
// attend, each as its own varlen segment, to the segment's keys up to the piece's end (the K/V
// prefix of a split sequence included), in two calls that read the keys in place (ContextPass):
// exact causal attention with no masks and no copies of the keys.
//
//   segment of 10 tokens, cp = 2:   | 0 1 | 2 3 4 | 5 6 | 7 8 9 |
//                                     r0    r1      r1    r0
#pragma once

#include <array>
#include <span>
#include <vector>

#include "models/chunk_batch.h"
#include "parallel/communicator.h"

namespace chunkflow::parallel {

// One varlen attention call of a cp rank over the full keys of the chunk (the K/V prefix rows, then
// the chunk's rows) read in place, never copied: segment b reads keys [cu_seqlens_k[b],
// cu_seqlens_k[b+1]). A query piece reads its segment's keys up to its own last token; segments
// without queries cover the key rows no query of the pass reads, so the segments tile the keys
// from the first row to the last. Pass 0 holds every segment's early piece, pass 1 the late one:
// within a pass no two pieces share a key row.
struct ContextPass {
  std::vector<int64_t> query_rows;    // positions in ContextLayout::rows of this pass's queries
  std::vector<int32_t> cu_seqlens_q;  // [segments + 1] over query_rows
  std::vector<int32_t> cu_seqlens_k;  // [segments + 1] over the full keys; ends at prefix + chunk tokens
  int64_t max_seqlen_q = 0, max_seqlen_k = 0;
};

// What one cp rank holds of a chunk. Pure layout arithmetic.
struct ContextLayout {
  std::vector<int64_t> rows;          // chunk rows (tokens) this rank holds, ascending
  std::vector<int32_t> cu_seqlens_q;  // [pieces + 1] over `rows`: the non-empty query pieces
  std::array<ContextPass, 2> passes;  // early pieces, late pieces
};

// chunk_cu_seqlens_q: the chunk's segment offsets; prefix_len: K/V prefix rows of the first
// segment (0 if none).
ContextLayout context_layout(std::span<const int32_t> chunk_cu_seqlens_q, int64_t prefix_len, int cp_size,
                             int cp_rank);

// Differentiable all-gather of rows over `group`: `local` [rows of this rank, ...] -> [sum of
// rows_of_rank, ...] with rank r's rows in block r (rank order). rows_of_rank[r] is every rank's
// row count (ranks may hold different counts). Backward: each rank's block of the gradient is
// summed over the group and lands on its owner (one reduce-scatter). Collective in forward and in
// backward.
torch::Tensor all_gather_rows(const torch::Tensor& local, Communicator& group, const std::vector<int64_t>& rows_of_rank);

// This cp rank's part of a whole chunk's batch: its rows of input_ids/positions/labels, its query
// pieces and key ranges, and a ContextShard whose gather reassembles every rank's K/V in chunk
// order. `group` must outlive every autograd graph built from the batch. A group of one returns
// the chunk unchanged.
models::ChunkBatch shard_chunk_batch(const models::ChunkBatch& chunk, Communicator& group);

}  // namespace chunkflow::parallel
