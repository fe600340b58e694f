// Megatron-LM indexed datasets (format version 1): a memory-mapped reader that validates the whole
// index up front, a streaming writer that commits atomically, and the uint8 loss-mask companion.
//
// On disk, for a prefix P (all integers little-endian, no padding or alignment):
//   P.idx  9 bytes   magic "MMIDIDX\0\0"
//          u64       version, always 1
//          u8        dtype code (TokenDType)
//          u64       sequence_count S
//          u64       document_count D   (= documents + 1)
//          i32[S]    sequence lengths in tokens          (starts at byte 34: unaligned)
//          i64[S]    sequence pointers: byte offset of each sequence in P.bin
//          i64[D]    document indices: 0, then the sequence index one past each document's last
//                    sequence, so the last value is S and document d is sequences
//                    [doc[d], doc[d + 1])
//   P.bin  the tokens of all sequences back to back, each sequence `length` values of the dtype;
//          Megatron writes them contiguously, so pointer[i] = sum(length[0..i)) * itemsize.
// The .idx size is therefore exactly 34 + 12 S + 8 D bytes. Multimodal indexes (a trailing i8
// mode per sequence) are not supported.
//
// Loss masks (supervised fine-tuning): a second dataset at loss_mask_prefix(P) with dtype uint8,
// values 0/1 and exactly the token dataset's sequence lengths. mask[i] == 1 means token i is a
// prediction target (Hugging Face `labels[i] != -100`): the loss includes predicting token i from
// tokens [0, i). mask[0] is kept as written but never contributes, since nothing precedes token 0
// (Hugging Face drops labels[0] in its shift the same way). A dataset without a mask trains on
// every token.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/file_io.h"

namespace chunkflow::data {

// Token storage types, with Megatron's numeric codes.
enum class TokenDType : uint8_t {
  kUInt8 = 1,
  kInt8 = 2,
  kInt16 = 3,
  kInt32 = 4,
  kInt64 = 5,
  kFloat64 = 6,
  kFloat32 = 7,
  kUInt16 = 8,
};

// Bytes per value: 1, 2, 4 or 8.
size_t dtype_size(TokenDType dtype);
// NumPy's name: "uint8", "int8", "int16", "int32", "int64", "float64", "float32", "uint16".
const char* dtype_name(TokenDType dtype);
// Inverse of dtype_name; throws core::Error listing the valid names (with a "did you mean").
TokenDType parse_dtype(const std::string& name);
// Megatron's rule (DType.optimal_dtype): uint16 when vocab_size < 65500, else int32.
TokenDType dtype_for_vocab(int64_t vocab_size);
// Whether `value` is stored exactly by `dtype` (float32: exactly representable as a float).
bool fits_dtype(TokenDType dtype, int64_t value);

// "<prefix>.idx", "<prefix>.bin", "<prefix>_loss_mask".
std::string idx_path(const std::string& prefix);
std::string bin_path(const std::string& prefix);
std::string loss_mask_prefix(const std::string& token_prefix);

// A read-only view of prefix.idx + prefix.bin. The constructor checks everything a reader relies
// on and throws core::Error naming the file, the rule and the offending value; afterwards no read
// can go out of bounds. The index arrays are copied out of the map; the .bin stays mapped.
class IndexedDataset {
 public:
  explicit IndexedDataset(const std::string& prefix);

  const std::string& prefix() const { return prefix_; }
  TokenDType dtype() const { return dtype_; }
  // Number of sequences S.
  int64_t size() const { return static_cast<int64_t>(lengths_.size()); }
  // Tokens in `sequence`; throws core::Error when sequence is not in [0, size()).
  int64_t length(int64_t sequence) const;
  // [S] tokens per sequence.
  const std::vector<int32_t>& lengths() const { return lengths_; }
  // Sum of lengths().
  int64_t total_tokens() const { return total_tokens_; }
  // [documents + 1], non-decreasing from 0 to S; see the format above.
  const std::vector<int64_t>& document_indices() const { return document_indices_; }
  int64_t documents() const { return static_cast<int64_t>(document_indices_.size()) - 1; }

  // Copies tokens [offset, offset + count) of `sequence` into out[count], converted to int32.
  // Throws core::Error when the range is outside the sequence, or when a stored value has no
  // exact int32 value (int64 out of range, float not integral or out of range).
  void read(int64_t sequence, int64_t offset, int64_t count, int32_t* out) const;
  // The whole sequence, [length(sequence)].
  std::vector<int32_t> read(int64_t sequence) const;

  // The raw bytes of `sequence` in the .bin: length(sequence) values of dtype(), little-endian,
  // not necessarily aligned. Valid while this object lives.
  std::span<const uint8_t> bytes(int64_t sequence) const;

 private:
  void check_sequence(int64_t sequence) const;

  std::string prefix_;
  std::string idx_path_;
  std::string bin_path_;
  core::MappedFile bin_;
  TokenDType dtype_ = TokenDType::kInt32;
  std::vector<int32_t> lengths_;             // [S]
  std::vector<int64_t> pointers_;            // [S] byte offsets into bin_
  std::vector<int64_t> document_indices_;    // [documents + 1]
  int64_t total_tokens_ = 0;
};

// The 0/1 loss mask of a token dataset (see the top of this file). The constructor opens
// mask_prefix, requires dtype uint8 and the same sequence count and lengths as `tokens`; values are
// checked when read.
class LossMaskDataset {
 public:
  LossMaskDataset(const std::string& mask_prefix, const IndexedDataset& tokens);

  int64_t size() const { return dataset_.size(); }
  const IndexedDataset& dataset() const { return dataset_; }

  // Copies mask values [offset, offset + count) of `sequence` into out[count]. Throws
  // core::Error on a bad range or a value other than 0 or 1 (naming file, sequence, position).
  void read(int64_t sequence, int64_t offset, int64_t count, uint8_t* out) const;
  // The whole sequence's mask, [length(sequence)].
  std::vector<uint8_t> read(int64_t sequence) const;

 private:
  IndexedDataset dataset_;
};

// Writes prefix.bin while streaming and prefix.idx at finish(). Nothing appears under the final
// names before finish(): both go to temporary files that finish() fsyncs, then renames (.bin, then
// .idx). Destroyed without finish() (an error, an exception), the temporary files are removed and
// any previous dataset at the prefix is untouched.
class IndexedDatasetWriter {
 public:
  IndexedDatasetWriter(const std::string& prefix, TokenDType dtype);
  ~IndexedDatasetWriter();
  IndexedDatasetWriter(const IndexedDatasetWriter&) = delete;
  IndexedDatasetWriter& operator=(const IndexedDatasetWriter&) = delete;

  // Appends one sequence, tokens[count] (count may be 0). Throws core::Error, leaving the writer
  // unchanged, when a value is not representable in the dtype.
  void add_sequence(const int32_t* tokens, int64_t count);
  void add_sequence(std::span<const int32_t> tokens) {
    add_sequence(tokens.data(), static_cast<int64_t>(tokens.size()));
  }
  // Closes the current document: the sequences added since the previous end_document() form one
  // document (an empty one when there were none, as Megatron does).
  void end_document();
  // Ends an open document (sequences added after the last end_document()), writes the index and
  // commits both files. The writer accepts nothing afterwards.
  void finish();

  const std::string& prefix() const { return prefix_; }
  TokenDType dtype() const { return dtype_; }
  int64_t sequences() const { return static_cast<int64_t>(lengths_.size()); }
  int64_t tokens() const { return tokens_; }
  // Documents closed so far.
  int64_t documents() const { return static_cast<int64_t>(document_indices_.size()) - 1; }

 private:
  std::string prefix_;
  TokenDType dtype_;
  std::unique_ptr<core::AtomicFileWriter> bin_;
  std::unique_ptr<core::AtomicFileWriter> idx_;
  std::vector<int32_t> lengths_;                 // [sequences]
  std::vector<int64_t> document_indices_{0};     // [documents + 1]
  std::vector<uint8_t> staging_;                 // one sequence converted to the dtype
  int64_t tokens_ = 0;
  bool finished_ = false;
};

}  // namespace chunkflow::data
