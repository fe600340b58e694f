// Context parallelism (design brief section 7): the tokens of every chunk are split over the cp
// ranks of a group, and attention stays exact by all-gathering K/V inside every layer.
//
// Causal balance: each segment of the chunk (a packed sequence, or the piece of a split one) is
// cut into 2 x cp pieces of as-equal-as-possible length and rank r takes pieces r and 2cp-1-r, so
// every rank holds one early (cheap) and one late (expensive) piece of every segment. Pieces may
// be empty, so no sequence is ever padded to a multiple of 2 x cp. A rank's query pieces then
// attend, each as its own varlen segment, to the segment's keys up to the piece's end (the K/V
// prefix of a split sequence included): exact causal attention with no masks.
//
//   segment of 10 tokens, cp = 2:   | 0 1 | 2 3 4 | 5 6 | 7 8 9 |
//                                     r0    r1      r1    r0
#pragma once

#include <span>
#include <vector>

#include "models/chunk_batch.h"
#include "parallel/communicator.h"

namespace chunkflow::parallel {

// What one cp rank holds of a chunk. Pure layout arithmetic.
struct ContextLayout {
  std::vector<int64_t> rows;          // chunk rows (tokens) this rank holds, ascending
  std::vector<int32_t> cu_seqlens_q;  // [pieces + 1] over `rows`: the non-empty query pieces
  std::vector<int64_t> key_rows;      // rows of the full keys (prefix, then chunk rows) each piece reads
  std::vector<int32_t> cu_seqlens_k;  // [pieces + 1] over `key_rows`
  int64_t max_seqlen_q = 0, max_seqlen_k = 0;
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
