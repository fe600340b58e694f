// Command-line parsing: values, flags, repeats, and errors a user would hit.
#include "core/command_line.h"

#include <gtest/gtest.h>

#include "core/error.h"

namespace chunkflow::core {
namespace {

struct Options {
  std::string output;
  int64_t count = 3;
  double scale = 1.0;
  bool quiet = false;
  std::vector<std::string> sets;
};

CommandLine make(Options& options) {
  CommandLine command_line("tool", "does things");
  command_line.add_string("output", &options.output, "where", true);
  command_line.add_int("count", &options.count, "how many");
  command_line.add_double("scale", &options.scale, "how big");
  command_line.add_flag("quiet", &options.quiet, "hush");
  command_line.add_repeated("set", &options.sets, "override");
  return command_line;
}

std::string error_of(const std::vector<std::string>& args) {
  Options options;
  try {
    make(options).parse(args);
  } catch (const Error& error) {
    return error.what();
  }
  return "";
}

TEST(CommandLineTest, ParsesBothValueFormsFlagsAndRepeats) {
  Options options;
  EXPECT_TRUE(make(options).parse({"--output", "out", "--count=7", "--scale", "0.5", "--quiet", "--set",
                                    "a.b=1", "--set=c.d=2"}));
  EXPECT_EQ(options.output, "out");
  EXPECT_EQ(options.count, 7);
  EXPECT_DOUBLE_EQ(options.scale, 0.5);
  EXPECT_TRUE(options.quiet);
  EXPECT_EQ(options.sets, (std::vector<std::string>{"a.b=1", "c.d=2"}));
}

TEST(CommandLineTest, ReportsUserMistakesClearly) {
  EXPECT_NE(error_of({"--output", "x", "--cuont", "3"}).find("unknown option '--cuont'; did you mean '--count'?"),
            std::string::npos);
  EXPECT_NE(error_of({}).find("missing required option '--output'"), std::string::npos);
  EXPECT_NE(error_of({"--output"}).find("needs a value"), std::string::npos);
  EXPECT_NE(error_of({"--output", "x", "--count", "many"}).find("tool --count must be an integer, got 'many'"),
            std::string::npos);
  EXPECT_NE(error_of({"--output", "x", "stray"}).find("unexpected argument 'stray'"), std::string::npos);
  EXPECT_NE(error_of({"--output", "x", "--quiet=maybe"}).find("true/false"), std::string::npos);
}

TEST(CommandLineTest, HelpReturnsFalseAndListsEveryOption) {
  Options options;
  CommandLine command_line = make(options);
  testing::internal::CaptureStdout();
  EXPECT_FALSE(command_line.parse({"--help"}));
  const std::string printed = testing::internal::GetCapturedStdout();
  for (const char* name : {"--output", "--count", "--scale", "--quiet", "--set"}) {
    EXPECT_NE(printed.find(name), std::string::npos) << name;
  }
}

}  // namespace
}  // namespace chunkflow::core
