// Context-parallel chunk layout: every token on exactly one cp rank, causal work balanced, each
// query piece reading exactly the keys up to its own end (prefix included), with no padding.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "core/random.h"
#include "parallel/context_parallel.h"

namespace chunkflow::parallel {
namespace {

TEST(ContextLayoutTest, TenTokensOnTwoRanksTakeMirroredPieces) {
  const std::vector<int32_t> cu = {0, 10};
  const ContextLayout rank0 = context_layout(cu, 0, 2, 0);
  const ContextLayout rank1 = context_layout(cu, 0, 2, 1);
  EXPECT_EQ(rank0.rows, (std::vector<int64_t>{0, 1, 7, 8, 9}));
  EXPECT_EQ(rank1.rows, (std::vector<int64_t>{2, 3, 4, 5, 6}));
  EXPECT_EQ(rank0.cu_seqlens_q, (std::vector<int32_t>{0, 2, 5}));
  // Early pass: piece [0, 2) reads keys 0..1, a query-less segment covers keys 2..9.
  EXPECT_EQ(rank0.passes[0].query_rows, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(rank0.passes[0].cu_seqlens_q, (std::vector<int32_t>{0, 2, 2}));
  EXPECT_EQ(rank0.passes[0].cu_seqlens_k, (std::vector<int32_t>{0, 2, 10}));
  // Late pass: piece [7, 10) reads keys 0..9.
  EXPECT_EQ(rank0.passes[1].query_rows, (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(rank0.passes[1].cu_seqlens_q, (std::vector<int32_t>{0, 3}));
  EXPECT_EQ(rank0.passes[1].cu_seqlens_k, (std::vector<int32_t>{0, 10}));
  EXPECT_EQ(rank0.passes[1].max_seqlen_k, 10);
}

TEST(ContextLayoutTest, RandomChunksAreCoveredOnceWithCausalKeyRanges) {
  core::Rng rng(2024);
  for (int trial = 0; trial < 2000; ++trial) {
    std::vector<int32_t> cu = {0};
    const int segments = 1 + static_cast<int>(rng.below(6));
    for (int s = 0; s < segments; ++s) cu.push_back(cu.back() + 1 + static_cast<int32_t>(rng.below(rng.uniform() < 0.5 ? 4 : 60)));
    const int64_t prefix = rng.uniform() < 0.5 ? 0 : static_cast<int64_t>(rng.below(100));
    const int cp = 1 + static_cast<int>(rng.below(4));
    std::vector<int> owner(static_cast<size_t>(cu.back()), -1);
    for (int rank = 0; rank < cp; ++rank) {
      const ContextLayout layout = context_layout(cu, prefix, cp, rank);
      ASSERT_TRUE(std::is_sorted(layout.rows.begin(), layout.rows.end()));
      for (const int64_t row : layout.rows) {
        ASSERT_EQ(owner[static_cast<size_t>(row)], -1) << "row " << row << " on two ranks";
        owner[static_cast<size_t>(row)] = rank;
      }
      std::vector<int> pass_of_row(layout.rows.size(), -1);
      for (size_t which = 0; which < 2; ++which) {
        const ContextPass& pass = layout.passes[which];
        ASSERT_EQ(pass.cu_seqlens_q.size(), pass.cu_seqlens_k.size());
        // The segments tile the full keys, prefix included, from the first row to the last.
        ASSERT_EQ(pass.cu_seqlens_k.front(), 0);
        ASSERT_EQ(pass.cu_seqlens_k.back(), prefix + cu.back());
        ASSERT_EQ(pass.cu_seqlens_q.back(), static_cast<int32_t>(pass.query_rows.size()));
        for (size_t b = 0; b + 1 < pass.cu_seqlens_q.size(); ++b) {
          ASSERT_LE(pass.cu_seqlens_k[b], pass.cu_seqlens_k[b + 1]);
          ASSERT_LE(pass.cu_seqlens_q[b], pass.cu_seqlens_q[b + 1]);
          if (pass.cu_seqlens_q[b] == pass.cu_seqlens_q[b + 1]) continue;  // keys no query reads
          const auto q_first = static_cast<size_t>(pass.cu_seqlens_q[b]);
          const auto q_last = static_cast<size_t>(pass.cu_seqlens_q[b + 1] - 1);
          const int64_t first = layout.rows[static_cast<size_t>(pass.query_rows[q_first])];
          const int64_t last = layout.rows[static_cast<size_t>(pass.query_rows[q_last])];
          ASSERT_EQ(last - first, static_cast<int64_t>(q_last - q_first)) << "piece not contiguous";
          for (size_t q = q_first; q <= q_last; ++q) pass_of_row[static_cast<size_t>(pass.query_rows[q])] = static_cast<int>(which);
          const size_t segment = static_cast<size_t>(std::upper_bound(cu.begin(), cu.end(), first) - cu.begin() - 1);
          ASSERT_LT(last, cu[segment + 1]) << "piece crosses a segment boundary";
          // Keys: the segment's first key row through the key row of the piece's last token.
          ASSERT_EQ(pass.cu_seqlens_k[b], segment == 0 ? 0 : prefix + cu[segment]);
          ASSERT_EQ(pass.cu_seqlens_k[b + 1], prefix + last + 1);
        }
      }
      for (const int which : pass_of_row) ASSERT_GE(which, 0) << "a local row is in no pass";
    }
    for (const int rank : owner) ASSERT_GE(rank, 0) << "a row is on no rank";
  }
}

TEST(ContextLayoutTest, CausalWorkIsBalancedAcrossRanks) {
  // One 4096-token segment after an 8192-token prefix, and one without: the score entries each
  // rank computes differ by well under 1%.
  for (const int64_t prefix : {0, 8192}) {
    for (const int cp : {2, 4, 8}) {
      std::vector<double> entries;
      for (int rank = 0; rank < cp; ++rank) {
        const ContextLayout layout = context_layout(std::vector<int32_t>{0, 4096}, prefix, cp, rank);
        double sum = 0;
        for (const ContextPass& pass : layout.passes) {
          for (size_t b = 0; b + 1 < pass.cu_seqlens_q.size(); ++b) {
            const double q = pass.cu_seqlens_q[b + 1] - pass.cu_seqlens_q[b];
            const double k = pass.cu_seqlens_k[b + 1] - pass.cu_seqlens_k[b];
            sum += q * k - q * (q - 1) / 2;  // causal entries of the piece (0 without queries)
          }
        }
        entries.push_back(sum);
      }
      const auto [low, high] = std::minmax_element(entries.begin(), entries.end());
      EXPECT_LT(*high / *low, 1.01) << "prefix " << prefix << " cp " << cp;
    }
  }
}

}  // namespace
}  // namespace chunkflow::parallel
