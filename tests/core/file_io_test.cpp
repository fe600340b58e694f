// Files: atomic writes never expose partial content; maps report bad paths.
#include "core/file_io.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "core/error.h"
#include "tests/support/temp_dir.h"

namespace chunkflow::core {
namespace {

TEST(FileIoTest, AtomicWriteReplacesContentAndLeavesNoTemporaries) {
  testing::TempDir dir;
  const std::string path = dir.file("state.txt");
  write_file_atomic(path, "first");
  write_file_atomic(path, "second version");
  EXPECT_EQ(read_file(path), "second version");
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    (void)entry;
    ++files;
  }
  EXPECT_EQ(files, 1);
}

TEST(FileIoTest, AbandonedWriterLeavesThePreviousFileIntact) {
  testing::TempDir dir;
  const std::string path = dir.file("data.bin");
  write_file_atomic(path, "good");
  {
    AtomicFileWriter writer(path);
    writer.write("half-written");
    // destroyed without commit, as when an exception unwinds
  }
  EXPECT_EQ(read_file(path), "good");
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), std::filesystem::directory_iterator()), 1);
}

TEST(FileIoTest, UnwritableLocationIsAnErrorNamingThePath) {
  // A regular file where a directory should be: fails even for root, unlike permission bits.
  testing::TempDir dir;
  write_file_atomic(dir.file("plain"), "x");
  const std::string path = dir.file("plain/inside");
  try {
    write_file_atomic(path, "y");
    FAIL();
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find(path), std::string::npos) << error.what();
    EXPECT_NE(std::string(error.what()).find("Not a directory"), std::string::npos) << error.what();
  }
}

TEST(FileIoTest, MissingDirectoryIsAnErrorNamingThePath) {
  testing::TempDir dir;
  const std::string path = dir.file("no/such/dir/file");
  try {
    write_file_atomic(path, "y");
    FAIL();
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find(path), std::string::npos) << error.what();
  }
}

TEST(FileIoTest, MapsFilesAndNamesMissingOnes) {
  testing::TempDir dir;
  write_file_atomic(dir.file("a"), "abc");
  const MappedFile mapped(dir.file("a"));
  ASSERT_EQ(mapped.size(), 3u);
  EXPECT_EQ(mapped.data()[2], 'c');
  write_file_atomic(dir.file("empty"), "");
  const MappedFile empty(dir.file("empty"));
  EXPECT_EQ(empty.size(), 0u);
  try {
    MappedFile missing(dir.file("missing"));
    FAIL();
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("missing"), std::string::npos);
    EXPECT_NE(std::string(error.what()).find("No such file"), std::string::npos);
  }
  EXPECT_THROW(MappedFile{dir.path()}, Error);  // a directory is not a regular file
}

}  // namespace
}  // namespace chunkflow::core
