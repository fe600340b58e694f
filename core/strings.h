// Small string helpers shared by the CLIs and the config loader: near-miss suggestions, strict
// number parsing and human-readable figures.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace chunkflow::core {

// Levenshtein distance between two ASCII strings.
int edit_distance(const std::string& a, const std::string& b);

// The candidate closest to `word` if it is a plausible typo (distance <= max(1, |word| / 3)),
// else "". Used for "did you mean ...?" hints.
std::string closest_match(const std::string& word, const std::vector<std::string>& candidates);

// "; did you mean 'x'?" or "" — ready to append to a message.
std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates);

// Whole-string parses; throw Error naming `what` when the text is not a number of that type.
int64_t parse_int64(const std::string& text, const std::string& what);
double parse_double(const std::string& text, const std::string& what);

std::string format_bytes(double bytes);        // "1.50 GiB"
std::string format_count(double count);        // "1.23M"
std::string format_duration(double seconds);   // "1h02m", "3m05s", "4.2s"
std::string format_fixed(double value, int decimals);

// Pads with spaces to at least `width` characters (text longer than width is kept whole).
std::string pad_left(const std::string& text, size_t width);
std::string pad_right(const std::string& text, size_t width);

std::string join(const std::vector<std::string>& parts, const std::string& separator);

// Text for an XML/SVG element or attribute: < > & " escaped.
std::string xml_escape(const std::string& text);

}  // namespace chunkflow::core
