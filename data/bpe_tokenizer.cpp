// Byte-level BPE from tokenizer.json; see bpe_tokenizer.h.
#include "data/bpe_tokenizer.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <limits>
#include <utility>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file_io.h"
#include "core/strings.h"
#include "data/utf8.h"

namespace chunkflow::data {
namespace {

using utf8::Decoded;
using utf8::append_utf8;
using utf8::decode_utf8;
using utf8::is_white_space;
using utf8::maximal_subpart;
using utf8::well_formed_length;

bool is_newline(uint32_t code) { return code == '\r' || code == '\n'; }

struct CodepointRange {
  uint32_t first, last;
};
struct Decomposition {
  uint32_t code, offset, count;
};
struct CombiningClass {
  uint32_t code, value;
};
struct Composition {
  uint32_t first, second, composite;
};
#include "data/unicode_tables.inc"

template <size_t N>
bool in_ranges(const CodepointRange (&ranges)[N], uint32_t code) {
  const auto* found = std::upper_bound(std::begin(ranges), std::end(ranges), code,
                                       [](uint32_t value, const CodepointRange& range) { return value < range.first; });
  return found != std::begin(ranges) && code <= (found - 1)->last;
}

bool is_letter(uint32_t code) { return in_ranges(kLetterRanges, code); }
bool is_number(uint32_t code) { return in_ranges(kNumberRanges, code); }
// ---- NFC (Unicode Standard Annex #15): canonical decomposition, canonical ordering, composition.
constexpr uint32_t kHangulFirst = 0xAC00, kHangulCount = 11172, kLeadFirst = 0x1100, kVowelFirst = 0x1161,
                   kTrailFirst = 0x11A7, kVowelCount = 21, kTrailCount = 28;

void decompose(uint32_t code, std::vector<uint32_t>& out) {
  if (code >= kHangulFirst && code < kHangulFirst + kHangulCount) {
    const uint32_t index = code - kHangulFirst;
    out.push_back(kLeadFirst + index / (kVowelCount * kTrailCount));
    out.push_back(kVowelFirst + index % (kVowelCount * kTrailCount) / kTrailCount);
    if (index % kTrailCount != 0) out.push_back(kTrailFirst + index % kTrailCount);
    return;
  }
  const auto* found = std::lower_bound(std::begin(kDecompositions), std::end(kDecompositions), code,
                                       [](const Decomposition& entry, uint32_t value) { return entry.code < value; });
  if (found == std::end(kDecompositions) || found->code != code) {
    out.push_back(code);
    return;
  }
  out.insert(out.end(), kDecomposedCodes + found->offset, kDecomposedCodes + found->offset + found->count);
}

uint32_t combining_class(uint32_t code) {
  const auto* found = std::lower_bound(std::begin(kCombiningClasses), std::end(kCombiningClasses), code,
                                       [](const CombiningClass& entry, uint32_t value) { return entry.code < value; });
  return found != std::end(kCombiningClasses) && found->code == code ? found->value : 0;
}

// The primary composite of (first, second), or 0.
uint32_t compose(uint32_t first, uint32_t second) {
  if (first >= kLeadFirst && first < kLeadFirst + 19 && second >= kVowelFirst && second < kVowelFirst + kVowelCount) {
    return kHangulFirst + ((first - kLeadFirst) * kVowelCount + (second - kVowelFirst)) * kTrailCount;
  }
  if (first >= kHangulFirst && first < kHangulFirst + kHangulCount && (first - kHangulFirst) % kTrailCount == 0 &&
      second > kTrailFirst && second < kTrailFirst + kTrailCount) {
    return first + (second - kTrailFirst);
  }
  const auto* found = std::lower_bound(
      std::begin(kCompositions), std::end(kCompositions), std::make_pair(first, second),
      [](const Composition& entry, const std::pair<uint32_t, uint32_t>& value) {
        return entry.first < value.first || (entry.first == value.first && entry.second < value.second);
      });
  return found != std::end(kCompositions) && found->first == first && found->second == second ? found->composite : 0;
}

std::vector<uint32_t> nfc(const std::vector<uint32_t>& codes) {
  std::vector<uint32_t> text;
  for (const uint32_t code : codes) decompose(code, text);
  // Canonical ordering: every run of non-starters sorted by combining class, stably.
  for (size_t i = 1; i < text.size(); ++i) {
    const uint32_t code = text[i], value = combining_class(code);
    if (value == 0) continue;
    size_t j = i;
    while (j > 0 && combining_class(text[j - 1]) > value) {
      text[j] = text[j - 1];
      --j;
    }
    text[j] = code;
  }
  if (text.empty()) return text;
  // Composition, as UAX #15's sample code: a mark joins the last starter unless blocked.
  size_t starter = 0, written = 1;
  uint32_t last_class = combining_class(text[0]) == 0 ? 0 : 256;
  for (size_t i = 1; i < text.size(); ++i) {
    const uint32_t code = text[i], value = combining_class(code);
    const uint32_t composite = compose(text[starter], code);
    if (composite != 0 && (last_class < value || last_class == 0)) {
      text[starter] = composite;
      continue;
    }
    if (value == 0) starter = written;
    last_class = value;
    text[written++] = code;
  }
  text.resize(written);
  return text;
}

// GPT-2's byte-to-character table: printable bytes stand for themselves, the others for U+0100 on.
const std::array<std::string, 256>& byte_symbols() {
  static const std::array<std::string, 256> symbols = [] {
    std::array<std::string, 256> table;
    int next = 256;
    for (int byte = 0; byte < 256; ++byte) {
      const bool printable = (byte >= 33 && byte <= 126) || (byte >= 161 && byte <= 172) || (byte >= 174);
      append_utf8(printable ? static_cast<uint32_t>(byte) : static_cast<uint32_t>(next++), table[static_cast<size_t>(byte)]);
    }
    return table;
  }();
  return symbols;
}

// The pre-tokenizer regexes, as tokenizer.json writes them.
constexpr const char* kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Length (in code points) of a contraction 's 't 're 've 'm 'll 'd at `at`, or 0.
size_t contraction(const std::vector<uint32_t>& codes, size_t at, bool any_case) {
  if (codes[at] != '\'') return 0;
  const auto letter = [&](size_t i) -> uint32_t {
    if (i >= codes.size()) return 0;
    const uint32_t c = codes[i];
    return any_case && c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
  };
  const uint32_t first = letter(at + 1), second = letter(at + 2);
  if (first == 's' || first == 't' || first == 'm' || first == 'd') return 2;
  if ((first == 'r' && second == 'e') || (first == 'v' && second == 'e') || (first == 'l' && second == 'l')) return 3;
  return 0;
}

// Length of the whitespace run starting at `at`.
size_t space_run(const std::vector<uint32_t>& codes, size_t at) {
  size_t end = at;
  while (end < codes.size() && is_white_space(codes[end])) ++end;
  return end - at;
}

// \s+(?!\S) then \s+: the run, but leave its last space to the next piece when a non-space follows.
size_t trailing_space(const std::vector<uint32_t>& codes, size_t at) {
  const size_t run = space_run(codes, at);
  if (run == 0) return 0;
  if (at + run == codes.size() || run == 1) return run;  // at the end, or \s+ alone
  return run - 1;
}

// One match of Llama 3's / Qwen2's pattern at `at` (alternatives in order, as the regex engine
// tries them); max_digits 3 (Llama 3) or 1 (Qwen2).
size_t match_split_pattern(const std::vector<uint32_t>& codes, size_t at, size_t max_digits) {
  const size_t n = codes.size();
  const auto letters_from = [&](size_t i) {
    size_t end = i;
    while (end < n && is_letter(codes[end])) ++end;
    return end - i;
  };
  if (const size_t length = contraction(codes, at, true)) return length;
  // [^\r\n\p{L}\p{N}]?\p{L}+
  const uint32_t c = codes[at];
  if (!is_newline(c) && !is_letter(c) && !is_number(c) && at + 1 < n && is_letter(codes[at + 1])) {
    return 1 + letters_from(at + 1);
  }
  if (is_letter(c)) return letters_from(at);
  // \p{N}{1,max}
  if (is_number(c)) {
    size_t end = at;
    while (end < n && end - at < max_digits && is_number(codes[end])) ++end;
    return end - at;
  }
  // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
  const auto other = [&](size_t i) { return i < n && !is_white_space(codes[i]) && !is_letter(codes[i]) && !is_number(codes[i]); };
  const size_t start = c == ' ' && other(at + 1) ? at + 1 : at;
  if (other(start)) {
    size_t end = start;
    while (other(end)) ++end;
    while (end < n && is_newline(codes[end])) ++end;
    return end - at;
  }
  // \s*[\r\n]+: the whitespace run up to its last newline.
  const size_t run = space_run(codes, at);
  for (size_t end = at + run; end > at; --end) {
    if (is_newline(codes[end - 1])) return end - at;
  }
  return trailing_space(codes, at);
}

// One match of GPT-2's pattern at `at`.
size_t match_gpt2_pattern(const std::vector<uint32_t>& codes, size_t at) {
  const size_t n = codes.size();
  if (const size_t length = contraction(codes, at, false)) return length;
  const auto run_of = [&](auto predicate) {
    const size_t start = codes[at] == ' ' && at + 1 < n && predicate(codes[at + 1]) ? at + 1 : at;
    size_t end = start;
    while (end < n && predicate(codes[end])) ++end;
    return end > start ? end - at : 0;
  };
  if (const size_t length = run_of(is_letter)) return length;
  if (const size_t length = run_of(is_number)) return length;
  if (const size_t length = run_of([](uint32_t code) { return !is_white_space(code) && !is_letter(code) && !is_number(code); })) {
    return length;
  }
  return trailing_space(codes, at);
}

bool json_is(const nlohmann::json& object, const char* key, const nlohmann::json& value) {
  return object.contains(key) && object[key] == value;
}

// The ids a post-processor puts around a single text. TemplateProcessing's "single" template:
// special tokens before and after $A; ByteLevel only adjusts offsets; Sequence applies its
// processors in order. Another kind sets `refusal` (add_special_tokens is then refused with it).
struct PostProcessorIds {
  std::vector<int32_t> prefix, suffix;
  std::string refusal;
};

void read_post_processor(const nlohmann::json& processor, const std::string& source, PostProcessorIds& ids) {
  if (processor.is_null() || json_is(processor, "type", "ByteLevel")) return;
  if (json_is(processor, "type", "Sequence")) {
    for (const auto& step : processor.at("processors")) read_post_processor(step, source, ids);
    return;
  }
  if (!json_is(processor, "type", "TemplateProcessing")) {
    ids.refusal = core::str_cat(source, ": post_processor ", processor.value("type", std::string("?")),
                                " is not supported (TemplateProcessing and ByteLevel are)");
    return;
  }
  bool after_text = false;
  for (const auto& piece : processor.at("single")) {
    if (piece.contains("Sequence")) {
      CF_CHECK(piece["Sequence"].value("id", "") == "A", source, ": post_processor single template piece ",
               piece.dump(), " is not supported");
      after_text = true;
      continue;
    }
    const std::string name = piece.at("SpecialToken").at("id").get<std::string>();
    const auto special = processor.at("special_tokens").find(name);
    CF_CHECK(special != processor.at("special_tokens").end(), source, ": post_processor names special token '",
             name, "' but does not define it");
    for (const auto& id : special->at("ids")) (after_text ? ids.suffix : ids.prefix).push_back(id.get<int32_t>());
  }
}

}  // namespace

BpeTokenizer BpeTokenizer::load(const std::string& path) {
  static std::atomic<uint64_t> loads{0};
  BpeTokenizer tokenizer;
  tokenizer.cache_id_ = ++loads;
  tokenizer.source_ = core::path_exists(path + "/tokenizer.json") ? path + "/tokenizer.json" : path;
  const std::string& file = tokenizer.source_;
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(core::read_file(file));
  } catch (const nlohmann::json::exception& error) {
    CF_FAIL(file, ": not a tokenizer.json (", error.what(), ")");
  }
  const auto refuse = [&](const std::string& what, const nlohmann::json& value) {
    CF_FAIL(file, ": ", what, " ", value.dump(), " is not supported (ChunkFlow reads byte-level BPE tokenizers as "
            "Llama 3, Qwen2 and GPT-2 ship them; data/bpe_tokenizer.h)");
  };
  const nlohmann::json& model = json.value("model", nlohmann::json());
  if (!json_is(model, "type", "BPE")) refuse("model.type", model.value("type", nlohmann::json()));
  if (model.value("byte_fallback", false)) refuse("model.byte_fallback", true);
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && !model[key].is_null() && model[key] != "") refuse(core::str_cat("model.", key), model[key]);
  }
  tokenizer.ignore_merges_ = model.value("ignore_merges", false);
  for (const auto& [token, id] : model.at("vocab").items()) {
    tokenizer.vocab_[token] = id.get<int32_t>();
    tokenizer.vocab_size_ = std::max<int64_t>(tokenizer.vocab_size_, id.get<int64_t>() + 1);
  }
  int32_t rank = 0;
  for (const auto& merge : model.at("merges")) {
    // "left right" (older files) or ["left", "right"].
    const std::string key = merge.is_string() ? merge.get<std::string>()
                                              : merge.at(0).get<std::string>() + " " + merge.at(1).get<std::string>();
    tokenizer.merge_ranks_.emplace(key, rank++);
  }
  for (const auto& added : json.value("added_tokens", nlohmann::json::array())) {
    for (const char* flag : {"lstrip", "rstrip", "single_word"}) {
      if (added.value(flag, false)) refuse(core::str_cat("added token ", added.at("content").dump(), " ", flag), true);
    }
    tokenizer.added_.push_back({added.at("content").get<std::string>(), added.at("id").get<int32_t>()});
    tokenizer.vocab_size_ = std::max<int64_t>(tokenizer.vocab_size_, added.at("id").get<int64_t>() + 1);
  }
  for (const auto& [token, id] : tokenizer.vocab_) tokenizer.token_of_id_[id] = {token, false};
  for (const AddedToken& added : tokenizer.added_) tokenizer.token_of_id_[added.id] = {added.content, true};
  std::stable_sort(tokenizer.added_.begin(), tokenizer.added_.end(),
                   [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });

  const nlohmann::json normalizer = json.value("normalizer", nlohmann::json());
  if (json_is(normalizer, "type", "NFC")) {
    tokenizer.nfc_ = true;
  } else if (!normalizer.is_null()) {
    refuse("normalizer", normalizer);
  }
  const nlohmann::json pre = json.value("pre_tokenizer", nlohmann::json());
  const auto byte_level = [](const nlohmann::json& step, bool use_regex) {
    return json_is(step, "type", "ByteLevel") && !step.value("add_prefix_space", false) &&
           step.value("use_regex", true) == use_regex;
  };
  if (byte_level(pre, true)) {
    tokenizer.pattern_ = Pattern::kGpt2;
  } else if (json_is(pre, "type", "Sequence") && pre.at("pretokenizers").size() == 2 &&
             byte_level(pre["pretokenizers"][1], false)) {
    const nlohmann::json& split = pre["pretokenizers"][0];
    const std::string regex = split.contains("pattern") ? split["pattern"].value("Regex", "") : "";
    if (!json_is(split, "type", "Split") || !json_is(split, "behavior", "Isolated") || split.value("invert", false)) {
      refuse("pre_tokenizer", pre);
    }
    if (regex == kLlama3Regex) {
      tokenizer.pattern_ = Pattern::kLlama3;
    } else if (regex == kQwen2Regex) {
      tokenizer.pattern_ = Pattern::kQwen2;
    } else {
      refuse("pre_tokenizer split pattern", split.value("pattern", nlohmann::json()));
    }
  } else {
    refuse("pre_tokenizer", pre);
  }
  PostProcessorIds post;
  read_post_processor(json.value("post_processor", nlohmann::json()), file, post);
  tokenizer.prefix_ids_ = std::move(post.prefix);
  tokenizer.suffix_ids_ = std::move(post.suffix);
  tokenizer.post_processor_refusal_ = std::move(post.refusal);
  return tokenizer;
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  // Byte-level symbol (as UTF-8) -> the byte it stands for.
  static const std::unordered_map<std::string, uint8_t> byte_of_symbol = [] {
    std::unordered_map<std::string, uint8_t> table;
    for (int byte = 0; byte < 256; ++byte) table[byte_symbols()[static_cast<size_t>(byte)]] = static_cast<uint8_t>(byte);
    return table;
  }();
  std::string bytes;
  for (const int32_t id : ids) {
    const auto found = token_of_id_.find(id);
    CF_CHECK(found != token_of_id_.end(), source_, ": token id ", id, " is not in the vocabulary");
    const std::string& token = found->second.text;
    if (found->second.added) {
      bytes += token;
      continue;
    }
    const Decoded symbols = decode_utf8(token, 0);
    for (size_t i = 0; i < symbols.codes.size(); ++i) {
      const std::string symbol = token.substr(symbols.offsets[i], symbols.offsets[i + 1] - symbols.offsets[i]);
      const auto byte = byte_of_symbol.find(symbol);
      CF_CHECK(byte != byte_of_symbol.end(), source_, ": token ", id, " holds '", symbol, "', not a byte-level symbol");
      bytes += static_cast<char>(byte->second);
    }
  }
  // Invalid UTF-8 (a character split between ids) -> one U+FFFD per maximal subpart of an
  // ill-formed sequence, as Rust's from_utf8_lossy and Python's errors="replace" do.
  std::string text;
  size_t i = 0;
  while (i < bytes.size()) {
    const size_t length = well_formed_length(bytes, i);
    if (length > 0) {
      text.append(bytes, i, length);
      i += length;
    } else {
      text += "\xEF\xBF\xBD";
      i += std::max<size_t>(1, maximal_subpart(bytes, i));
    }
  }
  return text;
}

int32_t BpeTokenizer::token_id(const std::string& token) const {
  for (const AddedToken& added : added_) {
    if (added.content == token) return added.id;
  }
  const auto found = vocab_.find(token);
  return found == vocab_.end() ? -1 : found->second;
}

std::vector<std::string> BpeTokenizer::pre_tokenize(std::string_view text) const {
  const Decoded decoded = decode_utf8(text, 0);
  std::vector<std::string> pieces;
  size_t at = 0;
  while (at < decoded.codes.size()) {
    const size_t length = pattern_ == Pattern::kGpt2 ? match_gpt2_pattern(decoded.codes, at)
                                                     : match_split_pattern(decoded.codes, at, pattern_ == Pattern::kLlama3 ? 3 : 1);
    CF_ASSERT(length > 0, "pre-tokenizer matched nothing at code point ", at);
    pieces.emplace_back(text.substr(decoded.offsets[at], decoded.offsets[at + length] - decoded.offsets[at]));
    at += length;
  }
  return pieces;
}

// BPE on one pre-tokenized piece: its bytes as byte-level symbols, then the lowest-ranked adjacent
// pair merged (every occurrence, left to right) until no pair has a rank. Also the bytes of the
// piece each resulting token stands for.
BpeTokenizer::MergedPiece BpeTokenizer::merge_piece(const std::string& piece) const {
  const auto& symbols_of_byte = byte_symbols();
  std::vector<std::string> symbols;
  std::vector<uint32_t> widths(piece.size(), 1);
  for (const char byte : piece) symbols.push_back(symbols_of_byte[static_cast<unsigned char>(byte)]);
  if (ignore_merges_) {  // a piece that is a token as a whole is that token
    std::string whole;
    for (const std::string& symbol : symbols) whole += symbol;
    const auto found = vocab_.find(whole);
    if (found != vocab_.end()) return {{found->second}, {static_cast<uint32_t>(piece.size())}};
  }
  while (symbols.size() > 1) {
    int32_t best = std::numeric_limits<int32_t>::max();
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      const auto found = merge_ranks_.find(symbols[i] + " " + symbols[i + 1]);
      if (found != merge_ranks_.end()) best = std::min(best, found->second);
    }
    if (best == std::numeric_limits<int32_t>::max()) break;
    std::vector<std::string> merged;
    std::vector<uint32_t> merged_widths;
    for (size_t i = 0; i < symbols.size(); ++i) {
      if (i + 1 < symbols.size()) {
        const auto found = merge_ranks_.find(symbols[i] + " " + symbols[i + 1]);
        if (found != merge_ranks_.end() && found->second == best) {
          merged.push_back(symbols[i] + symbols[i + 1]);
          merged_widths.push_back(widths[i] + widths[i + 1]);
          ++i;
          continue;
        }
      }
      merged.push_back(symbols[i]);
      merged_widths.push_back(widths[i]);
    }
    symbols = std::move(merged);
    widths = std::move(merged_widths);
  }
  MergedPiece result;
  result.widths = std::move(widths);
  for (const std::string& symbol : symbols) {
    const auto found = vocab_.find(symbol);
    CF_CHECK(found != vocab_.end(), source_, ": the vocabulary lacks the byte-level symbol '", symbol,
             "' (a byte-level BPE vocabulary holds every byte)");
    result.ids.push_back(found->second);
  }
  return result;
}

// Through a per-thread cache of merged pieces (words repeat: most pieces of a text were merged
// before), as the tokenizers library caches words. The cache belongs to one loaded tokenizer
// (cache_id_, unique per load) and is cleared when a thread switches tokenizers or it grows past
// its bound, so it never holds another vocabulary's ids and its memory stays bounded.
void BpeTokenizer::encode_piece(const std::string& piece, std::vector<int32_t>& ids, const PieceBytes& origin,
                                std::vector<TokenRange>* ranges) const {
  constexpr size_t kMaxCachedPieces = 1 << 16;
  constexpr size_t kMaxCachedPieceBytes = 256;  // longer pieces are rare and seldom repeat
  thread_local std::unordered_map<std::string, MergedPiece> cache;
  thread_local uint64_t cache_owner = 0;
  if (cache_owner != cache_id_ || cache.size() >= kMaxCachedPieces) {
    cache.clear();
    cache_owner = cache_id_;
  }
  MergedPiece uncached;
  const MergedPiece* merged = nullptr;
  if (piece.size() <= kMaxCachedPieceBytes) {
    auto found = cache.find(piece);
    if (found == cache.end()) found = cache.emplace(piece, merge_piece(piece)).first;
    merged = &found->second;
  } else {
    uncached = merge_piece(piece);
    merged = &uncached;
  }
  ids.insert(ids.end(), merged->ids.begin(), merged->ids.end());
  if (ranges == nullptr) return;
  size_t at = 0;
  for (const uint32_t width : merged->widths) {
    ranges->push_back(origin.range(at, at + width));
    at += width;
  }
}

void BpeTokenizer::encode_normal_text(std::string_view text, size_t offset, std::vector<int32_t>& ids,
                                      std::vector<TokenRange>* ranges) const {
  if (text.empty()) return;
  const auto encode_pieces = [&](std::string_view normal, const std::vector<size_t>* origin_begin,
                                 const std::vector<size_t>* origin_end) {
    size_t at = 0;
    for (const std::string& piece : pre_tokenize(normal)) {
      encode_piece(piece, ids, PieceBytes{offset, at, origin_begin, origin_end}, ranges);
      at += piece.size();
    }
  };
  if (nfc_) {
    const Decoded decoded = decode_utf8(text, offset);
    // UAX #15's quick check: text whose code points all have NFC_QC = Yes and whose combining marks
    // are in canonical order is already NFC (the common case).
    bool stable = true;
    uint32_t last_class = 0;
    for (const uint32_t code : decoded.codes) {
      const uint32_t value = combining_class(code);
      if (in_ranges(kNfcUnstableRanges, code) || (value != 0 && last_class > value)) {
        stable = false;
        break;
      }
      last_class = value;
    }
    if (!stable) {
      // Normalized run by run: a code point with NFC_QC = Yes and combining class 0 never combines
      // with what precedes it, so the text before it normalizes on its own. Each normalized byte
      // remembers the run of source bytes it came from (the token ranges' source).
      std::string normalized;
      std::vector<size_t> origin_begin, origin_end;
      size_t run = 0;
      for (size_t i = 1; i <= decoded.codes.size(); ++i) {
        const bool boundary = i == decoded.codes.size() ||
                              (combining_class(decoded.codes[i]) == 0 && !in_ranges(kNfcUnstableRanges, decoded.codes[i]));
        if (!boundary) continue;
        const std::vector<uint32_t> codes(decoded.codes.begin() + static_cast<std::ptrdiff_t>(run),
                                          decoded.codes.begin() + static_cast<std::ptrdiff_t>(i));
        const size_t before = normalized.size();
        for (const uint32_t code : nfc(codes)) append_utf8(code, normalized);
        origin_begin.resize(normalized.size(), decoded.offsets[run]);
        origin_end.resize(normalized.size(), decoded.offsets[i]);
        CF_ASSERT(normalized.size() > before, "NFC emptied a run of code points");
        run = i;
      }
      encode_pieces(normalized, &origin_begin, &origin_end);
      return;
    }
  }
  encode_pieces(text, nullptr, nullptr);
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text, bool add_special_tokens,
                                          std::vector<TokenRange>* ranges) const {
  CF_CHECK(!add_special_tokens || post_processor_refusal_.empty(), post_processor_refusal_);
  std::vector<int32_t> ids;
  if (ranges != nullptr) ranges->clear();
  if (add_special_tokens) {
    ids = prefix_ids_;
    if (ranges != nullptr) ranges->assign(ids.size(), TokenRange{0, 0});
  }
  size_t start = 0, at = 0;
  while (at < text.size()) {
    const AddedToken* matched = nullptr;
    for (const AddedToken& added : added_) {  // longest first
      if (!added.content.empty() && text.compare(at, added.content.size(), added.content) == 0) {
        matched = &added;
        break;
      }
    }
    if (matched == nullptr) {
      ++at;
      continue;
    }
    encode_normal_text(text.substr(start, at - start), start, ids, ranges);
    ids.push_back(matched->id);
    if (ranges != nullptr) ranges->push_back({at, at + matched->content.size()});
    at += matched->content.size();
    start = at;
  }
  encode_normal_text(text.substr(start), start, ids, ranges);
  if (add_special_tokens) {
    ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
    if (ranges != nullptr) ranges->resize(ids.size(), TokenRange{text.size(), text.size()});
  }
  return ids;
}

}  // namespace chunkflow::data
