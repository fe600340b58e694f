// CRC-32C: published check values (RFC 3720 appendix B.4), TFRecord's mask, piecewise updates,
// and the slicing path against a bit-at-a-time reference on every length and alignment.
#include "core/crc32c.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace chunkflow::core {
namespace {

uint32_t crc_of(const std::string& text) { return crc32c(text.data(), text.size()); }
uint32_t crc_of(const std::vector<uint8_t>& bytes) { return crc32c(bytes.data(), bytes.size()); }

// One bit per step, straight from the definition; shares nothing with the table code.
uint32_t reference_crc32c(const uint8_t* bytes, size_t size) {
  uint32_t crc = 0xffffffffu;
  for (size_t i = 0; i < size; ++i) {
    crc ^= bytes[i];
    for (int bit = 0; bit < 8; ++bit) crc = (crc & 1u) != 0 ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
  }
  return ~crc;
}

TEST(Crc32cTest, MatchesPublishedCheckValues) {
  EXPECT_EQ(crc_of(std::string()), 0x00000000u);
  EXPECT_EQ(crc_of(std::string("a")), 0xC1D04330u);
  EXPECT_EQ(crc_of(std::string("123456789")), 0xE3069283u);

  // RFC 3720 (iSCSI) appendix B.4.
  EXPECT_EQ(crc_of(std::vector<uint8_t>(32, 0x00)), 0x8A9136AAu);
  EXPECT_EQ(crc_of(std::vector<uint8_t>(32, 0xFF)), 0x62A8AB43u);
  std::vector<uint8_t> ascending(32);
  std::iota(ascending.begin(), ascending.end(), uint8_t{0});
  EXPECT_EQ(crc_of(ascending), 0x46DD794Eu);
  std::vector<uint8_t> descending(ascending.rbegin(), ascending.rend());
  EXPECT_EQ(crc_of(descending), 0x113FDB5Cu);
  const std::vector<uint8_t> iscsi_read_pdu = {
      0x01, 0xC0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
      0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18,
      0x28, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
  EXPECT_EQ(crc_of(iscsi_read_pdu), 0xD9963A56u);
}

TEST(Crc32cTest, MaskedCrcMatchesTensorBoardsRecordWriter) {
  // Values from tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c.
  EXPECT_EQ(masked_crc32c("", 0), 0xA282EAD8u);
  EXPECT_EQ(masked_crc32c("123456789", 9), 0xC78AB0E5u);
  const uint8_t length_24_le[8] = {24, 0, 0, 0, 0, 0, 0, 0};
  EXPECT_EQ(masked_crc32c(length_24_le, sizeof(length_24_le)), 0x224B7FA3u);
}

TEST(Crc32cTest, UnmaskInvertsTheMask) {
  for (uint32_t crc : {0u, 1u, 0xE3069283u, 0xFFFFFFFFu, 0x80000000u, 0x12345678u}) {
    const uint32_t masked = ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
    EXPECT_EQ(unmask_crc32c(masked), crc) << std::hex << crc;
  }
  EXPECT_EQ(unmask_crc32c(masked_crc32c("123456789", 9)), 0xE3069283u);
}

TEST(Crc32cTest, ContinuesAcrossPieces) {
  const std::string text = "The quick brown fox jumps over the lazy dog, twice over.";
  const uint32_t whole = crc_of(text);
  for (size_t split = 0; split <= text.size(); ++split) {
    const uint32_t first = crc32c(text.data(), split);
    EXPECT_EQ(crc32c(text.data() + split, text.size() - split, first), whole) << "split " << split;
  }
}

TEST(Crc32cTest, SlicedPathAgreesWithBitwiseReferenceAtEveryLengthAndAlignment) {
  std::mt19937 generator(1234);
  std::vector<uint8_t> buffer(300);
  for (auto& byte : buffer) byte = static_cast<uint8_t>(generator());
  for (size_t offset = 0; offset < 8; ++offset) {
    for (size_t length = 0; length + offset <= buffer.size(); ++length) {
      ASSERT_EQ(crc32c(buffer.data() + offset, length), reference_crc32c(buffer.data() + offset, length))
          << "offset " << offset << " length " << length;
    }
  }
}

TEST(Crc32cTest, DetectsASingleFlippedBit) {
  std::vector<uint8_t> bytes(64, 0x5A);
  const uint32_t original = crc_of(bytes);
  for (size_t bit = 0; bit < bytes.size() * 8; ++bit) {
    bytes[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    EXPECT_NE(crc_of(bytes), original) << "bit " << bit;
    bytes[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
  }
}

}  // namespace
}  // namespace chunkflow::core
