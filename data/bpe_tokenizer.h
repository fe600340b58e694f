// A model's own Hugging Face tokenizer, read from its tokenizer.json: the byte-level BPE that
// Llama 3 and Qwen2 / Qwen2.5 (and GPT-2) ship. Encodes text to the ids the `tokenizers` library
// gives with add_special_tokens = False (what apply_chat_template(tokenize=True) uses on the
// rendered template):
//
//   text -> split on added tokens (<|im_start|>, <|eot_id|>, ...: matched first, longest first)
//        -> normalizer (none, or NFC) -> pre-tokenizer (the model's split regex, see below)
//        -> each piece's UTF-8 bytes as byte-level symbols -> BPE merges by rank -> ids
//
// Pre-tokenizers understood: ByteLevel with GPT-2's own regex, and Split (behavior Isolated) with
// Llama 3's or Qwen2's pattern followed by ByteLevel without a regex. These regexes are matched by
// a hand-written scanner that follows them alternative by alternative (\p{L}, \p{N} from
// data/unicode_tables.inc, \s as Unicode White_Space); any other pattern, normalizer, model type
// or added-token option is refused by name, never approximated.
//
// NFC is Unicode's (UAX #15) from generated tables, applied only to text holding a code point whose
// NFC quick check is not Yes (other text is already NFC). Limit: case-insensitive contractions
// match ASCII letters only (Oniguruma's (?i) also folds U+017F and U+212A).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace chunkflow::data {

class BpeTokenizer {
 public:
  // `path`: a tokenizer.json, or a model folder holding one. Throws core::Error naming the file
  // and the part it cannot read or does not support.
  static BpeTokenizer load(const std::string& path);

  // Token ids of `text` (UTF-8). add_special_tokens: also the ids the tokenizer's post-processor
  // puts around a single text (TemplateProcessing, e.g. Llama 3's <|begin_of_text|>), as
  // tokenizers' encode(text) does by default; a post-processor other than TemplateProcessing /
  // ByteLevel is then refused by name. Throws core::Error for invalid UTF-8, naming the byte
  // offset. Const and without shared state: threads may encode with one tokenizer at once.
  // ranges (optional): for each id, the bytes [begin, end) of `text` it came from (an added
  // token's content; for text that NFC changed, the whole runs its normalized bytes came from;
  // the post-processor's ids: empty ranges at either end).
  struct TokenRange {
    size_t begin = 0, end = 0;
  };
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = false,
                              std::vector<TokenRange>* ranges = nullptr) const;

  // The text of `ids`, as tokenizers' decode(ids, skip_special_tokens=False) with the ByteLevel
  // decoder gives it: added tokens as their content, other tokens' byte-level symbols back to
  // bytes. Bytes that do not form valid UTF-8 (a character cut between ids) become U+FFFD, as in
  // Python's decode(errors="replace"). Throws core::Error naming an id outside the vocabulary.
  std::string decode(const std::vector<int32_t>& ids) const;
  // The id of an exact vocabulary or added token, or -1.
  int32_t token_id(const std::string& token) const;
  // One more than the largest id (vocabulary and added tokens).
  int64_t vocab_size() const { return vocab_size_; }
  const std::string& source() const { return source_; }

 private:
  enum class Pattern { kGpt2, kLlama3, kQwen2 };
  struct AddedToken {
    std::string content;
    int32_t id = 0;
  };
  // Where a pre-tokenized piece's bytes came from: bytes [at, ...) of the (normalized) text that
  // starts at byte `offset` of the encoded text; origin_begin/end map normalized bytes to source
  // bytes when NFC changed the text (null: unchanged).
  struct PieceBytes {
    size_t offset = 0, at = 0;
    const std::vector<size_t>* origin_begin = nullptr;
    const std::vector<size_t>* origin_end = nullptr;
    TokenRange range(size_t begin, size_t end) const {
      if (origin_begin == nullptr) return {offset + at + begin, offset + at + end};
      return {offset + (*origin_begin)[at + begin], offset + (*origin_end)[at + end - 1]};
    }
  };
  // A piece's ids after BPE, and the bytes of the piece each stands for.
  struct MergedPiece {
    std::vector<int32_t> ids;
    std::vector<uint32_t> widths;
  };
  MergedPiece merge_piece(const std::string& piece) const;
  std::vector<std::string> pre_tokenize(std::string_view text) const;
  void encode_piece(const std::string& piece, std::vector<int32_t>& ids, const PieceBytes& origin,
                    std::vector<TokenRange>* ranges) const;
  void encode_normal_text(std::string_view text, size_t offset, std::vector<int32_t>& ids,
                          std::vector<TokenRange>* ranges) const;

  std::string source_;
  uint64_t cache_id_ = 0;  // names this load's vocabulary in the per-thread piece cache
  Pattern pattern_ = Pattern::kGpt2;
  bool nfc_ = false;
  bool ignore_merges_ = false;
  std::unordered_map<std::string, int32_t> vocab_;
  // Every id's token (vocabulary and added tokens), and whether it is an added one (decoded as its
  // content, not as byte-level symbols).
  struct IdToken {
    std::string text;
    bool added = false;
  };
  std::unordered_map<int32_t, IdToken> token_of_id_;
  // Merge rank of a symbol pair, keyed by "left right" as tokenizer.json writes merges.
  std::unordered_map<std::string, int32_t> merge_ranks_;
  std::vector<AddedToken> added_;  // longest first
  int64_t vocab_size_ = 0;
  // The post-processor's ids before and after a single text; post_processor_refusal_ is set (and
  // add_special_tokens refused with it) when the post-processor is not understood.
  std::vector<int32_t> prefix_ids_, suffix_ids_;
  std::string post_processor_refusal_;
};

}  // namespace chunkflow::data
