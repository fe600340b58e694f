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
  // Piece [0, 2) reads keys 0..1; piece [7, 10) reads keys 0..9.
  EXPECT_EQ(rank0.cu_seqlens_k, (std::vector<int32_t>{0, 2, 12}));
  EXPECT_EQ(rank0.max_seqlen_k, 10);
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
      ASSERT_EQ(layout.cu_seqlens_q.size(), layout.cu_seqlens_k.size());
      for (size_t piece = 0; piece + 1 < layout.cu_seqlens_q.size(); ++piece) {
        const int64_t first = layout.rows[static_cast<size_t>(layout.cu_seqlens_q[piece])];
        const int64_t last = layout.rows[static_cast<size_t>(layout.cu_seqlens_q[piece + 1] - 1)];
        ASSERT_EQ(last - first + 1, layout.cu_seqlens_q[piece + 1] - layout.cu_seqlens_q[piece]) << "piece not contiguous";
        const size_t segment = static_cast<size_t>(std::upper_bound(cu.begin(), cu.end(), first) - cu.begin() - 1);
        ASSERT_LT(last, cu[segment + 1]) << "piece crosses a segment boundary";
        // Keys: the segment's first key row through the key row of the piece's last token.
        const int64_t key_first = segment == 0 ? 0 : prefix + cu[segment];
        const int64_t key_last = prefix + last;
        const auto begin = layout.key_rows.begin() + layout.cu_seqlens_k[piece];
        const auto end = layout.key_rows.begin() + layout.cu_seqlens_k[piece + 1];
        ASSERT_EQ(*begin, key_first);
        ASSERT_EQ(*(end - 1), key_last);
        ASSERT_EQ(end - begin, key_last - key_first + 1);
      }
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
        entries.push_back(
                          [&] {
                            double sum = 0;
                            for (size_t piece = 0; piece + 1 < layout.cu_seqlens_q.size(); ++piece) {
                              const double q = layout.cu_seqlens_q[piece + 1] - layout.cu_seqlens_q[piece];
                              const double k = layout.cu_seqlens_k[piece + 1] - layout.cu_seqlens_k[piece];
                              sum += q * k - q * (q - 1) / 2;  // causal entries of the piece
                            }
                            return sum;
                          }());
      }
      const auto [low, high] = std::minmax_element(entries.begin(), entries.end());
      EXPECT_LT(*high / *low, 1.01) << "prefix " << prefix << " cp " << cp;
    }
  }
}

}  // namespace
}  // namespace chunkflow::parallel
