// UTF-8 and Unicode helpers shared by the tokenizer and the chat-template engine: one home for
// decoding (well-formed sequences only), encoding, and the whitespace classes each of them needs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace chunkflow::data::utf8 {

// Code points of a UTF-8 text with the byte offset each starts at (one extra entry: the end).
struct Decoded {
  std::vector<uint32_t> codes;
  std::vector<size_t> offsets;
};

// Decodes `text`, accepting only well-formed sequences (Unicode Table 3-7: no overlong forms,
// surrogates or values past U+10FFFF, as Rust's str). Throws core::Error "invalid UTF-8 at byte
// N", N counted from `base_offset`.
Decoded decode_utf8(std::string_view text, size_t base_offset = 0);
// The length of the well-formed character at `at`, or 0.
size_t well_formed_length(std::string_view bytes, size_t at);
// Bytes at `at` that continue a well-formed prefix of the character its lead byte starts (the
// "maximal subpart" that lossy decoding replaces by one U+FFFD).
size_t maximal_subpart(std::string_view bytes, size_t at);
void append_utf8(uint32_t code, std::string& out);

// Unicode White_Space: what \s matches in the tokenizers' regex engine.
bool is_white_space(uint32_t code);
// Python's str.isspace() (what strip() and split() remove): White_Space plus U+001C..U+001F,
// which Python counts as separators by their bidirectional class.
bool is_python_space(uint32_t code);

}  // namespace chunkflow::data::utf8
