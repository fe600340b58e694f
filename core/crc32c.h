// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of TFRecord files such as
// TensorBoard event logs, plus TFRecord's masked form.
#pragma once

#include <cstddef>
#include <cstdint>

namespace chunkflow::core {

// CRC-32C of `size` bytes at `data`. `crc` is the result of a previous call, so that a buffer
// may be checksummed in pieces: crc32c(b, nb, crc32c(a, na)) == crc32c(a ++ b). Pass 0 to start.
// Table-driven (slicing-by-8), portable; no hardware instructions.
uint32_t crc32c(const void* data, size_t size, uint32_t crc = 0);

// TFRecord's masked CRC: ((crc >> 15) | (crc << 17)) + 0xa282ead8 of crc32c(data, size). The
// mask keeps a CRC stored next to the data it covers from being a CRC of itself.
uint32_t masked_crc32c(const void* data, size_t size);

// The inverse of the mask, for readers: unmask_crc32c(mask(crc)) == crc.
uint32_t unmask_crc32c(uint32_t masked);

}  // namespace chunkflow::core
