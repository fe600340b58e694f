// BpeTokenizer's per-thread cache of merged pieces belongs to one loaded tokenizer: a thread that
// encodes with two tokenizers (different merges for the same piece) gets each one's own ids, in
// any order and from several threads; token ranges come out of the cache as from a fresh merge.
// (Equality with the `tokenizers` library: data.bpe_tokenizer_matches_tokenizers.)
#include "data/bpe_tokenizer.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <string>
#include <thread>
#include <vector>

#include "core/file_io.h"
#include "tests/support/temp_dir.h"

namespace chunkflow::data {
namespace {

// GPT-2's byte-to-character table (printable bytes stand for themselves, the others for U+0100
// on), written out here so the test does not borrow the tokenizer's own.
std::string byte_symbol(int byte) {
  static const std::vector<std::string> table = [] {
    std::vector<std::string> symbols(256);
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
      const int code = printable ? b : next++;
      std::string text;
      if (code < 0x80) {
        text += static_cast<char>(code);
      } else {
        text += static_cast<char>(0xC0 | (code >> 6));
        text += static_cast<char>(0x80 | (code & 0x3F));
      }
      symbols[static_cast<size_t>(b)] = text;
    }
    return symbols;
  }();
  return table[static_cast<size_t>(byte)];
}

// A GPT-2-style tokenizer.json: every byte, plus the given merges (each adds its token).
std::string write_tokenizer(const testing::TempDir& dir, const std::string& name,
                            const std::vector<std::pair<std::string, std::string>>& merges) {
  nlohmann::json vocab = nlohmann::json::object();
  for (int byte = 0; byte < 256; ++byte) vocab[byte_symbol(byte)] = byte;
  nlohmann::json merge_list = nlohmann::json::array();
  int next_id = 256;
  for (const auto& [left, right] : merges) {
    vocab[left + right] = next_id++;
    merge_list.push_back(left + " " + right);
  }
  const nlohmann::json tokenizer = {
      {"version", "1.0"},
      {"added_tokens", nlohmann::json::array()},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merge_list}}}};
  const std::string path = dir.file(name + ".json");
  core::write_file_atomic(path, tokenizer.dump());
  return path;
}

TEST(BpeTokenizerCacheTest, EachLoadedTokenizerKeepsItsOwnMergesOnOneThread) {
  testing::TempDir dir;
  const BpeTokenizer merging = BpeTokenizer::load(write_tokenizer(dir, "merging", {{"a", "b"}, {"ab", "c"}}));
  const BpeTokenizer plain = BpeTokenizer::load(write_tokenizer(dir, "plain", {}));
  const std::vector<int32_t> merged{257}, bytes{'a', 'b', 'c'};
  for (int round = 0; round < 3; ++round) {  // the cache fills, then switches owner both ways
    EXPECT_EQ(merging.encode("abc"), merged) << "round " << round;
    EXPECT_EQ(plain.encode("abc"), bytes) << "round " << round;
  }
  // A copy shares its source's vocabulary, and so its cached pieces.
  const BpeTokenizer copy = merging;
  EXPECT_EQ(copy.encode("abc abc"), (std::vector<int32_t>{257, ' ', 257}));  // " abc" is [space][abc]
}

TEST(BpeTokenizerCacheTest, RangesFromTheCacheEqualRangesFromAFreshMerge) {
  testing::TempDir dir;
  const BpeTokenizer tokenizer = BpeTokenizer::load(write_tokenizer(dir, "merging", {{"a", "b"}}));
  // Pieces "abx", " abx", " abx": the third is the second's cached merge, at other bytes.
  std::vector<BpeTokenizer::TokenRange> ranges;
  const std::vector<int32_t> ids = tokenizer.encode("abx abx abx", false, &ranges);
  EXPECT_EQ(ids, (std::vector<int32_t>{256, 'x', ' ', 256, 'x', ' ', 256, 'x'}));
  const std::vector<std::pair<size_t, size_t>> expected{{0, 2}, {2, 3}, {3, 4}, {4, 6}, {6, 7}, {7, 8}, {8, 10}, {10, 11}};
  ASSERT_EQ(ranges.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(ranges[i].begin, expected[i].first) << "token " << i;
    EXPECT_EQ(ranges[i].end, expected[i].second) << "token " << i;
  }
}

TEST(BpeTokenizerCacheTest, ThreadsAlternatingTokenizersGetEachOnesIds) {
  testing::TempDir dir;
  const BpeTokenizer merging = BpeTokenizer::load(write_tokenizer(dir, "merging", {{"a", "b"}, {"ab", "c"}}));
  const BpeTokenizer plain = BpeTokenizer::load(write_tokenizer(dir, "plain", {}));
  std::vector<int> wrong(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 2000; ++i) {
        const bool use_merging = (i + t) % 3 != 0;
        const std::vector<int32_t> ids = (use_merging ? merging : plain).encode("abc");
        if (ids != (use_merging ? std::vector<int32_t>{257} : std::vector<int32_t>{'a', 'b', 'c'})) ++wrong[static_cast<size_t>(t)];
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(wrong, std::vector<int>(4, 0));
}

}  // namespace
}  // namespace chunkflow::data
