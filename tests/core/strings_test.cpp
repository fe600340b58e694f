// String helpers: suggestions, strict parsing, formatting.
#include "core/strings.h"

#include <gtest/gtest.h>

#include "core/error.h"

namespace chunkflow::core {
namespace {

TEST(StringsTest, SuggestsTheClosestKnownWordForATypo) {
  const std::vector<std::string> keys = {"chunk_size", "resident_chunks", "pack_into_tail"};
  EXPECT_EQ(closest_match("chunk_sze", keys), "chunk_size");
  EXPECT_EQ(closest_match("resident_chunk", keys), "resident_chunks");
  EXPECT_EQ(closest_match("learning_rate", keys), "");
  EXPECT_EQ(did_you_mean("chunk_sze", keys), "; did you mean 'chunk_size'?");
  EXPECT_EQ(edit_distance("kitten", "sitting"), 3);
  EXPECT_EQ(edit_distance("", "abc"), 3);
}

TEST(StringsTest, ParsesWholeNumbersOnly) {
  EXPECT_EQ(parse_int64("-42", "x"), -42);
  EXPECT_THROW(parse_int64("42abc", "x"), Error);
  EXPECT_THROW(parse_int64("", "x"), Error);
  EXPECT_THROW(parse_int64("99999999999999999999", "x"), Error);
  EXPECT_DOUBLE_EQ(parse_double("1e-3", "x"), 1e-3);
  EXPECT_THROW(parse_double("nan", "x"), Error);
  try {
    parse_int64("abc", "--sequences");
    FAIL();
  } catch (const Error& error) {
    EXPECT_STREQ(error.what(), "--sequences must be an integer, got 'abc'");
  }
}

TEST(StringsTest, FormatsFiguresForPeople) {
  EXPECT_EQ(format_bytes(512), "512 B");
  EXPECT_EQ(format_bytes(1536), "1.50 KiB");
  EXPECT_EQ(format_bytes(3.0 * 1024 * 1024 * 1024), "3.00 GiB");
  EXPECT_EQ(format_count(999), "999");
  EXPECT_EQ(format_count(1234567), "1.23M");
  EXPECT_EQ(format_duration(4.25), "4.2s");
  EXPECT_EQ(format_duration(185), "3m05s");
  EXPECT_EQ(format_duration(3720), "1h02m");
  EXPECT_EQ(format_duration(-1), "--");
  EXPECT_EQ(pad_left("7", 3), "  7");
  EXPECT_EQ(pad_right("ab", 4), "ab  ");
  EXPECT_EQ(pad_left("long", 2), "long");
  EXPECT_EQ(join({"a", "b", "c"}, ", "), "a, b, c");
}

}  // namespace
}  // namespace chunkflow::core
