// UTF-8 and Unicode helpers; see utf8.h.
#include "data/utf8.h"

#include "core/error.h"

namespace chunkflow::data::utf8 {
namespace {

// The UTF-8 well-formed byte sequences (Unicode Table 3-7): the length a lead byte announces and
// the range its second byte must fall in; 0 for a byte that cannot start a character.
struct Utf8Lead {
  size_t length = 0;
  unsigned char second_low = 0x80, second_high = 0xBF;
};

Utf8Lead utf8_lead(unsigned char lead) {
  if (lead < 0x80) return {1};
  if (lead >= 0xC2 && lead <= 0xDF) return {2};
  if (lead == 0xE0) return {3, 0xA0, 0xBF};
  if (lead == 0xED) return {3, 0x80, 0x9F};
  if (lead >= 0xE1 && lead <= 0xEF) return {3};
  if (lead == 0xF0) return {4, 0x90, 0xBF};
  if (lead == 0xF4) return {4, 0x80, 0x8F};
  if (lead >= 0xF1 && lead <= 0xF3) return {4};
  return {};
}

}  // namespace

bool is_white_space(uint32_t code) {
  return (code >= 0x09 && code <= 0x0D) || code == 0x20 || code == 0x85 || code == 0xA0 || code == 0x1680 ||
         (code >= 0x2000 && code <= 0x200A) || code == 0x2028 || code == 0x2029 || code == 0x202F || code == 0x205F ||
         code == 0x3000;
}

size_t maximal_subpart(std::string_view bytes, size_t at) {
  const Utf8Lead lead = utf8_lead(static_cast<unsigned char>(bytes[at]));
  if (lead.length == 0) return 0;
  size_t length = 1;
  while (length < lead.length && at + length < bytes.size()) {
    const auto next = static_cast<unsigned char>(bytes[at + length]);
    const bool fits = length == 1 ? next >= lead.second_low && next <= lead.second_high : next >= 0x80 && next <= 0xBF;
    if (!fits) break;
    ++length;
  }
  return length;
}

size_t well_formed_length(std::string_view bytes, size_t at) {
  const size_t length = maximal_subpart(bytes, at);
  return length > 0 && length == utf8_lead(static_cast<unsigned char>(bytes[at])).length ? length : 0;
}

Decoded decode_utf8(std::string_view text, size_t base_offset) {
  Decoded decoded;
  size_t i = 0;
  while (i < text.size()) {
    // Only well-formed sequences: no overlong forms, surrogates or values past U+10FFFF (what
    // Rust's str accepts).
    const size_t length = well_formed_length(text, i);
    CF_CHECK(length > 0, "invalid UTF-8 at byte ", base_offset + i);
    const auto lead = static_cast<unsigned char>(text[i]);
    uint32_t code = length == 1 ? lead : lead & (0x7F >> length);
    for (size_t k = 1; k < length; ++k) code = (code << 6) | (static_cast<unsigned char>(text[i + k]) & 0x3F);
    decoded.codes.push_back(code);
    decoded.offsets.push_back(i);
    i += length;
  }
  decoded.offsets.push_back(text.size());
  return decoded;
}

void append_utf8(uint32_t code, std::string& out) {
  if (code < 0x80) {
    out += static_cast<char>(code);
  } else if (code < 0x800) {
    out += static_cast<char>(0xC0 | (code >> 6));
    out += static_cast<char>(0x80 | (code & 0x3F));
  } else if (code < 0x10000) {
    out += static_cast<char>(0xE0 | (code >> 12));
    out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (code >> 18));
    out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code & 0x3F));
  }
}

bool is_python_space(uint32_t code) { return is_white_space(code) || (code >= 0x1C && code <= 0x1F); }

}  // namespace chunkflow::data::utf8
