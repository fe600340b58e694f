// Process memory stats: bytes (not KiB), a peak that remembers a 200 MiB touch after it is freed,
// and a reset that brings the peak back to the current resident size.
#include "trainer/memory_stats.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <memory>

namespace chunkflow::trainer {
namespace {

constexpr int64_t kMiB = int64_t{1} << 20;

// Resident size from /proc/self/statm, which counts pages: an independent check of the units.
int64_t statm_resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t total_pages = 0, resident_pages = 0;
  statm >> total_pages >> resident_pages;
  return resident_pages * ::sysconf(_SC_PAGESIZE);
}

TEST(MemoryStatsTest, ReportsResidentAndPeakInBytes) {
  const MemoryStats stats = read_memory_stats();
  const int64_t statm_bytes = statm_resident_bytes();
  ASSERT_GT(statm_bytes, 0);
  EXPECT_NEAR(static_cast<double>(stats.current_rss_bytes), static_cast<double>(statm_bytes),
              static_cast<double>(kMiB));
  EXPECT_GE(stats.peak_rss_bytes, stats.current_rss_bytes);
}

TEST(MemoryStatsTest, PeakRemembersTouchedMemoryUntilReset) {
#if defined(__SANITIZE_ADDRESS__)
  // AddressSanitizer keeps freed blocks in its quarantine: the free below returns nothing.
  GTEST_SKIP() << "needs malloc to return freed memory to the kernel (not under AddressSanitizer)";
#endif
  if (!reset_peak_rss()) GTEST_SKIP() << "this kernel refuses /proc/self/clear_refs = 5";
  const MemoryStats before = read_memory_stats();
  EXPECT_LE(before.peak_rss_bytes, before.current_rss_bytes + 8 * kMiB) << "reset did not take";

  constexpr int64_t kBlockBytes = 200 * kMiB;
  const int64_t page_bytes = ::sysconf(_SC_PAGESIZE);
  {
    // Uninitialized: only the pages written below become resident.
    std::unique_ptr<uint8_t[]> block(new uint8_t[kBlockBytes]);
    for (int64_t offset = 0; offset < kBlockBytes; offset += page_bytes) {
      block[offset] = static_cast<uint8_t>(offset / page_bytes);
    }
    // Keeps the compiler from dropping the stores to memory that is freed unread.
    asm volatile("" : : "r"(block.get()) : "memory");
    const MemoryStats during = read_memory_stats();
    EXPECT_GE(during.current_rss_bytes - before.current_rss_bytes, 190 * kMiB);
    EXPECT_GE(during.peak_rss_bytes - before.peak_rss_bytes, 190 * kMiB);
  }

  // 200 MiB is far above malloc's mmap threshold, so the free returned it to the kernel.
  const MemoryStats freed = read_memory_stats();
  EXPECT_LT(freed.current_rss_bytes, before.current_rss_bytes + 50 * kMiB);
  EXPECT_GE(freed.peak_rss_bytes, before.current_rss_bytes + 190 * kMiB);

  ASSERT_TRUE(reset_peak_rss());
  const MemoryStats reset = read_memory_stats();
  EXPECT_LT(reset.peak_rss_bytes, freed.peak_rss_bytes - 150 * kMiB);
  EXPECT_LE(reset.peak_rss_bytes, reset.current_rss_bytes + 8 * kMiB);
  EXPECT_GE(reset.peak_rss_bytes, reset.current_rss_bytes);
}

}  // namespace
}  // namespace chunkflow::trainer
