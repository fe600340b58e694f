// JSONL preparation: tokens and loss masks written as expected, every kind of bad line reported
// with file:line, strict mode writes nothing, skip mode counts and reports.
#include "data/jsonl_prepare.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/indexed_dataset.h"
#include "tests/support/expect_error.h"
#include "tests/support/temp_dir.h"

namespace chunkflow::data {
namespace {

using testing::TempDir;

std::string write_text(const TempDir& dir, const std::string& name, const std::string& text) {
  const std::string path = dir.file(name);
  std::ofstream out(path, std::ios::binary);
  out << text;
  return path;
}

PrepareOptions options_for(const TempDir& dir, const std::string& input) {
  PrepareOptions options;
  options.input = input;
  options.output_prefix = dir.file("out/tokens");
  options.show_progress = false;
  return options;
}

bool dataset_exists(const std::string& prefix) {
  return std::filesystem::exists(idx_path(prefix)) || std::filesystem::exists(bin_path(prefix));
}

// Expects prepare_jsonl to throw core::Error containing every one of `parts`.
void expect_prepare_error(const PrepareOptions& options, std::initializer_list<std::string> parts) {
  chunkflow::testing::expect_error_mentions([&] { prepare_jsonl(options); }, parts);
}

TEST(JsonlPrepareTest, MixedLabelsLossMaskAndPlainLinesGiveTokensAndMasks) {
  TempDir dir;
  const std::string input = write_text(
      dir, "mixed.jsonl",
      "{\"input_ids\": [5, 6, 7]}\n"
      "{\"input_ids\": [1, 2, 3, 4], \"labels\": [-100, -100, 3, 4]}\n"
      "\n"
      "{\"input_ids\": [9, 8], \"loss_mask\": [1, false], \"text\": \"x\"}\r\n"
      "{\"input_ids\": [7], \"loss_mask\": [true]}");
  PrepareOptions options = options_for(dir, input);
  options.vocab_size = 32000;
  const PrepareSummary summary = prepare_jsonl(options);

  EXPECT_EQ(summary.lines, 5);
  EXPECT_EQ(summary.blank_lines, 1);
  EXPECT_EQ(summary.bad_lines, 0);
  EXPECT_EQ(summary.sequences, 4);
  EXPECT_EQ(summary.tokens, 10);
  EXPECT_EQ(summary.min_length, 1);
  EXPECT_EQ(summary.max_length, 4);
  // Targets at positions >= 1: 2 + 2 + 0 + 0.
  EXPECT_EQ(summary.loss_tokens, 4);
  EXPECT_TRUE(summary.has_loss_mask);
  EXPECT_EQ(summary.dtype, "uint16");
  EXPECT_EQ(summary.loss_mask_prefix, loss_mask_prefix(options.output_prefix));
  EXPECT_NE(summary.to_text().find("loss tokens: 4"), std::string::npos) << summary.to_text();

  const IndexedDataset tokens(options.output_prefix);
  EXPECT_EQ(tokens.dtype(), TokenDType::kUInt16);
  ASSERT_EQ(tokens.size(), 4);
  EXPECT_EQ(tokens.read(0), (std::vector<int32_t>{5, 6, 7}));
  EXPECT_EQ(tokens.read(1), (std::vector<int32_t>{1, 2, 3, 4}));
  EXPECT_EQ(tokens.read(2), (std::vector<int32_t>{9, 8}));
  EXPECT_EQ(tokens.read(3), (std::vector<int32_t>{7}));
  EXPECT_EQ(tokens.document_indices(), (std::vector<int64_t>{0, 1, 2, 3, 4}));

  const LossMaskDataset mask(summary.loss_mask_prefix, tokens);
  EXPECT_EQ(mask.read(0), (std::vector<uint8_t>{1, 1, 1}));
  EXPECT_EQ(mask.read(1), (std::vector<uint8_t>{0, 0, 1, 1}));
  EXPECT_EQ(mask.read(2), (std::vector<uint8_t>{1, 0}));
  EXPECT_EQ(mask.read(3), (std::vector<uint8_t>{1}));
}

TEST(JsonlPrepareTest, PlainFileWritesNoMaskAndRemovesAStaleOne) {
  TempDir dir;
  const std::string masked = write_text(dir, "masked.jsonl",
                                        "{\"input_ids\": [1, 2], \"loss_mask\": [0, 1]}\n");
  const std::string plain = write_text(dir, "plain.jsonl", "{\"input_ids\": [1, 2]}\n");
  PrepareOptions options = options_for(dir, masked);
  prepare_jsonl(options);
  ASSERT_TRUE(dataset_exists(loss_mask_prefix(options.output_prefix)));

  options.input = plain;
  const PrepareSummary summary = prepare_jsonl(options);
  EXPECT_FALSE(summary.has_loss_mask);
  EXPECT_EQ(summary.loss_mask_prefix, "");
  EXPECT_EQ(summary.loss_tokens, 1);
  EXPECT_EQ(summary.dtype, "int32");  // auto without a vocabulary
  EXPECT_FALSE(dataset_exists(loss_mask_prefix(options.output_prefix)));
  EXPECT_EQ(IndexedDataset(options.output_prefix).read(0), (std::vector<int32_t>{1, 2}));
  for (const auto& entry : std::filesystem::directory_iterator(dir.file("out"))) {
    const std::string name = entry.path().filename().string();
    EXPECT_TRUE(name == "tokens.bin" || name == "tokens.idx") << "left over: " << name;
  }
}

TEST(JsonlPrepareTest, EachKindOfBadLineNamesFileAndLine) {
  struct Case {
    std::string line;
    std::string what;
  };
  const Case cases[] = {
      {"{\"input_ids\": [1, 2", "not valid JSON"},
      // nlohmann throws out_of_range (not parse_error) for this; it used to escape as a crash.
      {"{\"input_ids\": [1, 1e999]}", "not valid JSON (number overflow parsing '1e999')"},
      {"[1, 2, 3]", "expected a JSON object"},
      {"{\"text\": \"hello\"}", "missing \"input_ids\" (keys: text)"},
      {"{\"input_ids\": \"1 2 3\"}", "\"input_ids\" is \"1 2 3\", expected an array"},
      {"{\"input_ids\": []}", "\"input_ids\" is empty"},
      {"{\"input_ids\": [1, -3]}", "input_ids[1] is -3; token ids must be >= 0"},
      {"{\"input_ids\": [1, 2.5]}", "input_ids[1] is 2.5, expected a non-negative integer"},
      {"{\"input_ids\": [1, \"2\"]}", "input_ids[1] is \"2\""},
      {"{\"input_ids\": [1, 3000000000]}", "input_ids[1] is 3000000000, beyond the int32 range"},
      {"{\"input_ids\": [1, 2], \"labels\": [-100]}",
       "\"labels\" has 1 values but \"input_ids\" has 2"},
      {"{\"input_ids\": [1, 2], \"labels\": [-100, 3]}", "labels[1] is 3 but input_ids[1] is 2"},
      {"{\"input_ids\": [1, 2], \"labels\": [2, -100]}", "labels[0] is 2 but input_ids[0] is 1"},
      {"{\"input_ids\": [1, 2], \"loss_mask\": [1, 2]}", "loss_mask[1] is 2, expected 0, 1"},
      {"{\"input_ids\": [1, 2], \"loss_mask\": [1]}", "\"loss_mask\" has 1 values"},
      {"{\"input_ids\": [1, 2], \"loss_mask\": [1, 1], \"labels\": [1, 2]}",
       "both \"labels\" and \"loss_mask\""},
  };
  for (const Case& test : cases) {
    SCOPED_TRACE(test.line);
    TempDir dir;
    const std::string input = write_text(
        dir, "bad.jsonl", "{\"input_ids\": [4]}\n\n" + test.line + "\n{\"input_ids\": [4]}\n");
    expect_prepare_error(options_for(dir, input), {input + ":3: ", test.what});
  }
}

TEST(JsonlPrepareTest, StrictModeWritesNothingAndKeepsAnOlderDataset) {
  TempDir dir;
  const std::string good = write_text(dir, "good.jsonl", "{\"input_ids\": [1, 2, 3]}\n");
  const std::string bad = write_text(dir, "bad.jsonl",
                                     "{\"input_ids\": [4, 5], \"loss_mask\": [0, 1]}\n"
                                     "{\"input_ids\": [6]}\n"
                                     "not json\n");
  PrepareOptions options = options_for(dir, bad);
  expect_prepare_error(options, {bad + ":3: not valid JSON", "nothing was written"});
  EXPECT_FALSE(dataset_exists(options.output_prefix));
  EXPECT_FALSE(dataset_exists(loss_mask_prefix(options.output_prefix)));
  EXPECT_TRUE(std::filesystem::is_empty(dir.file("out"))) << "temporary files were left";

  options.input = good;
  prepare_jsonl(options);
  options.input = bad;
  expect_prepare_error(options, {bad + ":3:"});
  EXPECT_EQ(IndexedDataset(options.output_prefix).read(0), (std::vector<int32_t>{1, 2, 3}));
  EXPECT_FALSE(dataset_exists(loss_mask_prefix(options.output_prefix)));
}

TEST(JsonlPrepareTest, SkipModeCountsBadLinesAndKeepsTheFirstMessages) {
  TempDir dir;
  const std::string input = write_text(dir, "some_bad.jsonl",
                                       "{\"input_ids\": [1]}\n"
                                       "oops\n"
                                       "{\"input_ids\": []}\n"
                                       "{\"input_ids\": [2, 3]}\n"
                                       "{\"input_ids\": [-1]}\n"
                                       "{\"input_ids\": [1e999]}\n");
  PrepareOptions options = options_for(dir, input);
  options.skip_bad_lines = true;
  options.max_reported_errors = 2;
  const PrepareSummary summary = prepare_jsonl(options);
  EXPECT_EQ(summary.lines, 6);
  EXPECT_EQ(summary.bad_lines, 4);
  EXPECT_EQ(summary.sequences, 2);
  ASSERT_EQ(summary.errors.size(), 2u);
  EXPECT_EQ(summary.errors[0].rfind(input + ":2: not valid JSON", 0), 0u) << summary.errors[0];
  EXPECT_EQ(summary.errors[1], input + ":3: \"input_ids\" is empty");
  EXPECT_NE(summary.to_text().find("first 2 of 4"), std::string::npos) << summary.to_text();
  const IndexedDataset tokens(options.output_prefix);
  ASSERT_EQ(tokens.size(), 2);
  EXPECT_EQ(tokens.read(1), (std::vector<int32_t>{2, 3}));
}

TEST(JsonlPrepareTest, InputWithoutAnyGoodLineIsAnErrorEvenWhenSkipping) {
  TempDir dir;
  const std::string input = write_text(dir, "all_bad.jsonl", "\nnope\n");
  PrepareOptions options = options_for(dir, input);
  options.skip_bad_lines = true;
  expect_prepare_error(options, {input, "no usable lines", "1 blank", "1 bad"});
  EXPECT_FALSE(dataset_exists(options.output_prefix));
}

TEST(JsonlPrepareTest, VocabSizeBoundsTokenIdsAndChoosesTheDType) {
  TempDir dir;
  const std::string input =
      write_text(dir, "vocab.jsonl", "{\"input_ids\": [0, 99]}\n{\"input_ids\": [100]}\n");
  PrepareOptions options = options_for(dir, input);
  options.vocab_size = 100;
  expect_prepare_error(options, {input + ":2: input_ids[0] is 100, not below vocab_size 100"});

  options.vocab_size = 101;
  EXPECT_EQ(prepare_jsonl(options).dtype, "uint16");
  options.vocab_size = 151936;
  EXPECT_EQ(prepare_jsonl(options).dtype, "int32");
  EXPECT_EQ(IndexedDataset(options.output_prefix).dtype(), TokenDType::kInt32);

  options.vocab_size = 70000;
  options.dtype = "uint16";
  expect_prepare_error(options, {"dtype uint16 cannot hold token ids up to", "69999"});
  options.vocab_size = 0;
  const std::string wide = write_text(dir, "wide.jsonl", "{\"input_ids\": [70000]}\n");
  options.input = wide;
  expect_prepare_error(options, {wide + ":1: input_ids[0] is 70000", "uint16"});
  options.dtype = "uint61";
  expect_prepare_error(options, {"unknown token dtype 'uint61'"});
}

TEST(JsonlPrepareTest, BlankLinesAreSkippedAndCounted) {
  TempDir dir;
  const std::string input =
      write_text(dir, "blank.jsonl", "\n   \n{\"input_ids\": [3]}\n\t\n\n{\"input_ids\": [4]}\n\n");
  const PrepareSummary summary = prepare_jsonl(options_for(dir, input));
  EXPECT_EQ(summary.lines, 7);
  EXPECT_EQ(summary.blank_lines, 5);
  EXPECT_EQ(summary.sequences, 2);
  EXPECT_EQ(summary.bad_lines, 0);
}

TEST(JsonlPrepareTest, MissingInputIsNamed) {
  TempDir dir;
  expect_prepare_error(options_for(dir, dir.file("absent.jsonl")),
                       {dir.file("absent.jsonl"), "does not exist"});
}

TEST(JsonlPrepareTest, LargeGeneratedFileRoundTrips) {
  TempDir dir;
  constexpr int kLines = 20000;
  const std::string input = dir.file("large.jsonl");
  int64_t expected_tokens = 0;
  int64_t expected_loss_tokens = 0;
  {
    std::ofstream out(input);
    for (int line = 0; line < kLines; ++line) {
      const int length = 1 + (line * 37) % 97;
      expected_tokens += length;
      std::string ids, labels;
      for (int i = 0; i < length; ++i) {
        const int token = (line * 131 + i * 7) % 50000;
        ids += (i ? ", " : "") + std::to_string(token);
        const bool target = line % 3 != 0 || i >= length / 2;
        labels += (i ? ", " : "") + (target ? std::to_string(token) : std::string("-100"));
        if (target && i >= 1) ++expected_loss_tokens;
      }
      if (line % 3 == 2) {  // plain line: every token is a target
        out << "{\"input_ids\": [" << ids << "]}\n";
      } else {
        out << "{\"input_ids\": [" << ids << "], \"labels\": [" << labels << "]}\n";
      }
    }
  }
  PrepareOptions options = options_for(dir, input);
  options.vocab_size = 50000;
  const PrepareSummary summary = prepare_jsonl(options);
  EXPECT_EQ(summary.sequences, kLines);
  EXPECT_EQ(summary.tokens, expected_tokens);
  EXPECT_EQ(summary.loss_tokens, expected_loss_tokens);

  const IndexedDataset tokens(options.output_prefix);
  const LossMaskDataset mask(summary.loss_mask_prefix, tokens);
  ASSERT_EQ(tokens.size(), kLines);
  EXPECT_EQ(tokens.total_tokens(), expected_tokens);
  for (const int line : {0, 1, 2, 12345, kLines - 1}) {
    const int length = 1 + (line * 37) % 97;
    const std::vector<int32_t> read = tokens.read(line);
    const std::vector<uint8_t> read_mask = mask.read(line);
    ASSERT_EQ(static_cast<int>(read.size()), length);
    for (int i = 0; i < length; ++i) {
      EXPECT_EQ(read[static_cast<size_t>(i)], (line * 131 + i * 7) % 50000);
      const bool target = line % 3 != 0 || i >= length / 2;
      EXPECT_EQ(read_mask[static_cast<size_t>(i)], target ? 1 : 0) << "line " << line << " i " << i;
    }
  }
}

}  // namespace
}  // namespace chunkflow::data
