// Megatron indexed dataset reader, writer and loss-mask companion; see indexed_dataset.h.
#include "data/indexed_dataset.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <iomanip>
#include <limits>
#include <sstream>

#include "core/error.h"
#include "core/strings.h"

namespace chunkflow::data {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the Megatron format is little-endian; this reader assumes a little-endian host");

constexpr char kMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
constexpr size_t kMagicSize = sizeof(kMagic);
constexpr uint64_t kVersion = 1;
// magic + u64 version + u8 dtype + u64 sequence_count + u64 document_count
constexpr size_t kHeaderSize = kMagicSize + 8 + 1 + 8 + 8;
static_assert(kHeaderSize == 34);
// i32 length + i64 pointer per sequence; i64 per document index.
constexpr uint64_t kBytesPerSequence = 4 + 8;
constexpr uint64_t kBytesPerDocumentIndex = 8;

constexpr TokenDType kAllDTypes[] = {
    TokenDType::kUInt8, TokenDType::kInt8,    TokenDType::kInt16,   TokenDType::kInt32,
    TokenDType::kInt64, TokenDType::kFloat64, TokenDType::kFloat32, TokenDType::kUInt16};

bool valid_dtype_code(uint8_t code) { return code >= 1 && code <= 8; }

// Unaligned little-endian load: the .idx arrays start at byte 34, so never cast to T*.
template <typename T>
T load(const uint8_t* bytes) {
  T value;
  std::memcpy(&value, bytes, sizeof(T));
  return value;
}

template <typename T>
void store(uint8_t* bytes, T value) {
  std::memcpy(bytes, &value, sizeof(T));
}

// "MMIDIDX\x00\x00"-style rendering of raw header bytes for messages.
std::string escape_bytes(const uint8_t* bytes, size_t count) {
  std::ostringstream out;
  for (size_t i = 0; i < count; ++i) {
    const uint8_t byte = bytes[i];
    if (byte >= 0x20 && byte < 0x7f && byte != '\\' && byte != '"') {
      out << static_cast<char>(byte);
    } else {
      out << "\\x" << std::hex << std::setw(2) << std::setfill('0') << static_cast<int>(byte)
          << std::dec;
    }
  }
  return out.str();
}

std::string format_double(double value) {
  std::ostringstream out;
  out << std::setprecision(17) << value;
  return out.str();
}

std::string dtype_range(TokenDType dtype) {
  switch (dtype) {
    case TokenDType::kUInt8: return "0..255";
    case TokenDType::kInt8: return "-128..127";
    case TokenDType::kInt16: return "-32768..32767";
    case TokenDType::kUInt16: return "0..65535";
    case TokenDType::kFloat32: return "integers exact in float32, e.g. |x| <= 16777216";
    default: return "any int32";
  }
}

// Converts `count` stored integers of type T to int32, failing on values outside int32.
template <typename T>
void convert_integers(const uint8_t* source, int64_t count, int32_t* out, const std::string& file,
                      int64_t sequence, int64_t first_position) {
  for (int64_t i = 0; i < count; ++i) {
    const T value = load<T>(source + static_cast<size_t>(i) * sizeof(T));
    if constexpr (sizeof(T) >= sizeof(int64_t)) {
      CF_CHECK(value >= std::numeric_limits<int32_t>::min() &&
                   value <= std::numeric_limits<int32_t>::max(),
               file, ": sequence ", sequence, " position ", first_position + i, " holds ", value,
               ", which is outside the int32 range of token ids");
    }
    out[i] = static_cast<int32_t>(value);
  }
}

// Converts `count` stored floats to int32, failing on anything that is not an integral int32.
template <typename T>
void convert_floats(const uint8_t* source, int64_t count, int32_t* out, const std::string& file,
                    int64_t sequence, int64_t first_position) {
  for (int64_t i = 0; i < count; ++i) {
    const double value = static_cast<double>(load<T>(source + static_cast<size_t>(i) * sizeof(T)));
    const bool integral_int32 = std::isfinite(value) && value == std::trunc(value) &&
                                value >= static_cast<double>(std::numeric_limits<int32_t>::min()) &&
                                value <= static_cast<double>(std::numeric_limits<int32_t>::max());
    CF_CHECK(integral_int32, file, ": sequence ", sequence, " position ", first_position + i,
             " holds ", format_double(value),
             ", which is not a token id (an integer in int32 range)");
    out[i] = static_cast<int32_t>(value);
  }
}

}  // namespace

// --- dtypes ----------------------------------------------------------------------------------

size_t dtype_size(TokenDType dtype) {
  switch (dtype) {
    case TokenDType::kUInt8:
    case TokenDType::kInt8: return 1;
    case TokenDType::kInt16:
    case TokenDType::kUInt16: return 2;
    case TokenDType::kInt32:
    case TokenDType::kFloat32: return 4;
    case TokenDType::kInt64:
    case TokenDType::kFloat64: return 8;
  }
  CF_ASSERT(false, "invalid TokenDType code ", static_cast<int>(dtype));
  return 0;
}

const char* dtype_name(TokenDType dtype) {
  switch (dtype) {
    case TokenDType::kUInt8: return "uint8";
    case TokenDType::kInt8: return "int8";
    case TokenDType::kInt16: return "int16";
    case TokenDType::kInt32: return "int32";
    case TokenDType::kInt64: return "int64";
    case TokenDType::kFloat64: return "float64";
    case TokenDType::kFloat32: return "float32";
    case TokenDType::kUInt16: return "uint16";
  }
  CF_ASSERT(false, "invalid TokenDType code ", static_cast<int>(dtype));
  return "";
}

TokenDType parse_dtype(const std::string& name) {
  std::vector<std::string> names;
  for (const TokenDType dtype : kAllDTypes) {
    if (name == dtype_name(dtype)) return dtype;
    names.emplace_back(dtype_name(dtype));
  }
  CF_FAIL("unknown token dtype '", name, "'; expected one of ", core::join(names, ", "),
          core::did_you_mean(name, names));
}

TokenDType dtype_for_vocab(int64_t vocab_size) {
  CF_CHECK(vocab_size > 0, "vocab_size must be > 0 to choose a token dtype, got ", vocab_size);
  return vocab_size < 65500 ? TokenDType::kUInt16 : TokenDType::kInt32;
}

bool fits_dtype(TokenDType dtype, int64_t value) {
  switch (dtype) {
    case TokenDType::kUInt8: return value >= 0 && value <= 255;
    case TokenDType::kInt8: return value >= -128 && value <= 127;
    case TokenDType::kInt16: return value >= -32768 && value <= 32767;
    case TokenDType::kUInt16: return value >= 0 && value <= 65535;
    case TokenDType::kInt32:
      return value >= std::numeric_limits<int32_t>::min() &&
             value <= std::numeric_limits<int32_t>::max();
    case TokenDType::kInt64: return true;
    case TokenDType::kFloat32: {
      if (value >= -(int64_t{1} << 24) && value <= (int64_t{1} << 24)) return true;
      // Larger magnitudes: exact only if the float round trip keeps the value. Compare in double
      // (exact for floats) so that no out-of-range float-to-integer conversion happens.
      const float as_float = static_cast<float>(value);
      return static_cast<double>(as_float) == static_cast<double>(value) &&
             std::fabs(static_cast<double>(as_float)) < 9.2233720368547758e18 &&
             static_cast<int64_t>(as_float) == value;
    }
    case TokenDType::kFloat64: {
      if (value >= -(int64_t{1} << 53) && value <= (int64_t{1} << 53)) return true;
      const double as_double = static_cast<double>(value);
      return std::fabs(as_double) < 9.2233720368547758e18 &&
             static_cast<int64_t>(as_double) == value;
    }
  }
  return false;
}

std::string idx_path(const std::string& prefix) { return prefix + ".idx"; }
std::string bin_path(const std::string& prefix) { return prefix + ".bin"; }
std::string loss_mask_prefix(const std::string& token_prefix) {
  return token_prefix + "_loss_mask";
}

// --- reader ----------------------------------------------------------------------------------

IndexedDataset::IndexedDataset(const std::string& prefix)
    : prefix_(prefix), idx_path_(idx_path(prefix)), bin_path_(bin_path(prefix)) {
  CF_CHECK(core::path_exists(idx_path_), "indexed dataset '", prefix, "': index file '", idx_path_,
           "' does not exist");
  CF_CHECK(core::path_exists(bin_path_), "indexed dataset '", prefix, "': data file '", bin_path_,
           "' does not exist");
  const core::MappedFile idx(idx_path_);
  const uint8_t* bytes = idx.data();
  const uint64_t idx_size = idx.size();
  const std::string& idx_name = idx_path_;

  // Header.
  CF_CHECK(idx_size >= kMagicSize, idx_name, ": file has ", idx_size,
           " bytes, too short for a Megatron index (the header alone is ", kHeaderSize, " bytes)");
  CF_CHECK(std::memcmp(bytes, kMagic, kMagicSize) == 0, idx_name, ": bad magic \"",
           escape_bytes(bytes, kMagicSize), "\", expected \"MMIDIDX\\x00\\x00\"; this is not a ",
           "Megatron indexed dataset index");
  CF_CHECK(idx_size >= kHeaderSize, idx_name, ": truncated header: file has ", idx_size,
           " bytes, the header needs ", kHeaderSize);
  size_t at = kMagicSize;
  const uint64_t version = load<uint64_t>(bytes + at);
  at += 8;
  CF_CHECK(version == kVersion, idx_name, ": unsupported version ", version,
           ", only version 1 is supported");
  const uint8_t code = bytes[at];
  at += 1;
  CF_CHECK(valid_dtype_code(code), idx_name, ": unknown dtype code ", static_cast<int>(code),
           ", expected 1..8 (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, "
           "8 uint16)");
  dtype_ = static_cast<TokenDType>(code);
  const uint64_t sequence_count = load<uint64_t>(bytes + at);
  at += 8;
  const uint64_t document_count = load<uint64_t>(bytes + at);
  at += 8;

  // Sizes, checked by division so that a hostile count cannot overflow a product.
  const uint64_t body_size = idx_size - kHeaderSize;
  CF_CHECK(sequence_count <= body_size / kBytesPerSequence, idx_name, ": sequence_count ",
           sequence_count, " needs ", kBytesPerSequence, " bytes per sequence but only ", body_size,
           " bytes follow the header (truncated index or corrupt header)");
  const uint64_t after_sequences = body_size - sequence_count * kBytesPerSequence;
  CF_CHECK(document_count <= after_sequences / kBytesPerDocumentIndex, idx_name,
           ": document_count ", document_count, " needs ", kBytesPerDocumentIndex,
           " bytes per document index but only ", after_sequences,
           " bytes follow the sequence arrays (truncated index or corrupt header)");
  const uint64_t expected_size =
      kHeaderSize + sequence_count * kBytesPerSequence + document_count * kBytesPerDocumentIndex;
  CF_CHECK(idx_size == expected_size, idx_name, ": file has ", idx_size, " bytes but ",
           sequence_count, " sequences and ", document_count, " document indices take exactly ",
           expected_size, " (", idx_size - expected_size,
           " trailing bytes; multimodal indexes with sequence modes are not supported)");
  CF_CHECK(document_count >= 1, idx_name,
           ": document_count is 0; document indices must start with 0 and end with the "
           "sequence count ",
           sequence_count);

  // The arrays, copied out with memcpy (unaligned).
  const size_t sequences = static_cast<size_t>(sequence_count);
  lengths_.resize(sequences);
  pointers_.resize(sequences);
  document_indices_.resize(static_cast<size_t>(document_count));
  if (sequences > 0) {
    std::memcpy(lengths_.data(), bytes + at, sequences * sizeof(int32_t));
    at += sequences * sizeof(int32_t);
    std::memcpy(pointers_.data(), bytes + at, sequences * sizeof(int64_t));
    at += sequences * sizeof(int64_t);
  }
  std::memcpy(document_indices_.data(), bytes + at, document_indices_.size() * sizeof(int64_t));

  for (size_t i = 0; i < sequences; ++i) {
    CF_CHECK(lengths_[i] >= 0, idx_name, ": sequence ", i, " has negative length ", lengths_[i]);
  }

  bin_ = core::MappedFile(bin_path_);
  const int64_t bin_size = static_cast<int64_t>(bin_.size());
  const int64_t item_size = static_cast<int64_t>(dtype_size(dtype_));
  // Each step adds at most 2^31 * 8 bytes and the running end never exceeds the .bin size, so
  // this sum cannot overflow.
  int64_t end = 0;
  for (size_t i = 0; i < sequences; ++i) {
    CF_CHECK(pointers_[i] == end, idx_name, ": sequence ", i, " has pointer ", pointers_[i],
             " but the previous sequences end at ", end,
             " (sequences must be stored back to back in ", bin_path_, ")");
    end += static_cast<int64_t>(lengths_[i]) * item_size;
    CF_CHECK(end <= bin_size, bin_path_, ": truncated: sequence ", i, " of ", idx_name,
             " ends at byte ", end, " but the file has only ", bin_size, " bytes");
    total_tokens_ += lengths_[i];
  }
  CF_CHECK(end == bin_size, bin_path_, ": file has ", bin_size, " bytes but ", idx_name,
           " describes ", total_tokens_, " tokens of ", dtype_name(dtype_), " = ", end,
           " bytes (", bin_size - end, " extra bytes)");

  CF_CHECK(document_indices_.front() == 0, idx_name, ": document index 0 is ",
           document_indices_.front(), ", expected 0");
  for (size_t d = 1; d < document_indices_.size(); ++d) {
    CF_CHECK(document_indices_[d] >= document_indices_[d - 1] &&
                 document_indices_[d] <= static_cast<int64_t>(sequence_count),
             idx_name, ": document index ", d, " is ", document_indices_[d],
             ", expected a value between the previous index ", document_indices_[d - 1],
             " and the sequence count ", sequence_count);
  }
  CF_CHECK(document_indices_.back() == static_cast<int64_t>(sequence_count), idx_name,
           ": the last document index is ", document_indices_.back(),
           " but it must equal the sequence count ", sequence_count);
}

void IndexedDataset::check_sequence(int64_t sequence) const {
  CF_CHECK(sequence >= 0 && sequence < size(), prefix_, ": sequence ", sequence,
           " out of range; the dataset has ", size(), " sequences");
}

int64_t IndexedDataset::length(int64_t sequence) const {
  check_sequence(sequence);
  return lengths_[static_cast<size_t>(sequence)];
}

std::span<const uint8_t> IndexedDataset::bytes(int64_t sequence) const {
  check_sequence(sequence);
  const size_t index = static_cast<size_t>(sequence);
  const size_t byte_count = static_cast<size_t>(lengths_[index]) * dtype_size(dtype_);
  if (byte_count == 0) return {};
  return {bin_.data() + pointers_[index], byte_count};
}

void IndexedDataset::read(int64_t sequence, int64_t offset, int64_t count, int32_t* out) const {
  const int64_t sequence_length = length(sequence);
  CF_CHECK(offset >= 0 && count >= 0 && offset <= sequence_length &&
               count <= sequence_length - offset,
           prefix_, ": cannot read ", count, " tokens at offset ", offset, " of sequence ",
           sequence, ", which has ", sequence_length, " tokens");
  if (count == 0) return;
  const size_t item_size = dtype_size(dtype_);
  const uint8_t* source = bin_.data() + pointers_[static_cast<size_t>(sequence)] +
                          static_cast<size_t>(offset) * item_size;
  const std::string& file = bin_path_;
  switch (dtype_) {
    case TokenDType::kUInt8:
      convert_integers<uint8_t>(source, count, out, file, sequence, offset);
      break;
    case TokenDType::kInt8:
      convert_integers<int8_t>(source, count, out, file, sequence, offset);
      break;
    case TokenDType::kInt16:
      convert_integers<int16_t>(source, count, out, file, sequence, offset);
      break;
    case TokenDType::kUInt16:
      convert_integers<uint16_t>(source, count, out, file, sequence, offset);
      break;
    case TokenDType::kInt32:
      std::memcpy(out, source, static_cast<size_t>(count) * sizeof(int32_t));
      break;
    case TokenDType::kInt64:
      convert_integers<int64_t>(source, count, out, file, sequence, offset);
      break;
    case TokenDType::kFloat32:
      convert_floats<float>(source, count, out, file, sequence, offset);
      break;
    case TokenDType::kFloat64:
      convert_floats<double>(source, count, out, file, sequence, offset);
      break;
  }
}

std::vector<int32_t> IndexedDataset::read(int64_t sequence) const {
  std::vector<int32_t> tokens(static_cast<size_t>(length(sequence)));
  read(sequence, 0, static_cast<int64_t>(tokens.size()), tokens.data());
  return tokens;
}

// --- loss masks ------------------------------------------------------------------------------

LossMaskDataset::LossMaskDataset(const std::string& mask_prefix, const IndexedDataset& tokens)
    : dataset_(mask_prefix) {
  const std::string mask_idx = idx_path(mask_prefix);
  const std::string token_idx = idx_path(tokens.prefix());
  CF_CHECK(dataset_.dtype() == TokenDType::kUInt8, mask_idx,
           ": a loss mask must have dtype uint8, got ", dtype_name(dataset_.dtype()));
  CF_CHECK(dataset_.size() == tokens.size(), mask_idx, " has ", dataset_.size(),
           " sequences but ", token_idx, " has ", tokens.size(),
           "; a loss mask needs one sequence per token sequence");
  const auto& mask_lengths = dataset_.lengths();
  const auto& token_lengths = tokens.lengths();
  const auto mismatch =
      std::mismatch(mask_lengths.begin(), mask_lengths.end(), token_lengths.begin());
  if (mismatch.first != mask_lengths.end()) {
    const auto sequence = mismatch.first - mask_lengths.begin();
    CF_FAIL(mask_idx, ": sequence ", sequence, " has length ", *mismatch.first, " but ", token_idx,
            " has length ", *mismatch.second,
            " for it; a loss mask needs exactly one value per token");
  }
}

void LossMaskDataset::read(int64_t sequence, int64_t offset, int64_t count, uint8_t* out) const {
  const std::span<const uint8_t> values = dataset_.bytes(sequence);
  const int64_t sequence_length = static_cast<int64_t>(values.size());
  CF_CHECK(offset >= 0 && count >= 0 && offset <= sequence_length &&
               count <= sequence_length - offset,
           dataset_.prefix(), ": cannot read ", count, " mask values at offset ", offset,
           " of sequence ", sequence, ", which has ", sequence_length, " values");
  for (int64_t i = 0; i < count; ++i) {
    const uint8_t value = values[static_cast<size_t>(offset + i)];
    CF_CHECK(value <= 1, bin_path(dataset_.prefix()), ": sequence ", sequence, " position ",
             offset + i, " has loss mask value ", static_cast<int>(value), ", expected 0 or 1");
    out[i] = value;
  }
}

std::vector<uint8_t> LossMaskDataset::read(int64_t sequence) const {
  std::vector<uint8_t> mask(static_cast<size_t>(dataset_.length(sequence)));
  read(sequence, 0, static_cast<int64_t>(mask.size()), mask.data());
  return mask;
}

// --- writer ----------------------------------------------------------------------------------

IndexedDatasetWriter::IndexedDatasetWriter(const std::string& prefix, TokenDType dtype)
    : prefix_(prefix), dtype_(dtype) {
  CF_ASSERT(valid_dtype_code(static_cast<uint8_t>(dtype)), "invalid TokenDType code ",
            static_cast<int>(dtype));
  bin_ = std::make_unique<core::AtomicFileWriter>(bin_path(prefix));
  idx_ = std::make_unique<core::AtomicFileWriter>(idx_path(prefix));
}

IndexedDatasetWriter::~IndexedDatasetWriter() = default;

void IndexedDatasetWriter::add_sequence(const int32_t* tokens, int64_t count) {
  CF_ASSERT(!finished_, "add_sequence after finish on ", prefix_);
  CF_ASSERT(count >= 0 && (count == 0 || tokens != nullptr), "bad sequence of ", count, " tokens");
  CF_CHECK(count <= std::numeric_limits<int32_t>::max(), bin_path(prefix_), ": sequence ",
           sequences(), " has ", count, " tokens; the index stores lengths as int32");
  const size_t item_size = dtype_size(dtype_);
  for (int64_t i = 0; i < count; ++i) {
    CF_CHECK(fits_dtype(dtype_, tokens[i]), bin_path(prefix_), ": sequence ", sequences(),
             " position ", i, " has value ", tokens[i], ", which dtype ", dtype_name(dtype_),
             " cannot hold (", dtype_range(dtype_), "); choose a wider dtype such as int32");
  }
  const size_t values = static_cast<size_t>(count);
  staging_.resize(values * item_size);
  uint8_t* staged = staging_.data();
  switch (dtype_) {
    case TokenDType::kUInt8:
      for (size_t i = 0; i < values; ++i) store(staged + i, static_cast<uint8_t>(tokens[i]));
      break;
    case TokenDType::kInt8:
      for (size_t i = 0; i < values; ++i) store(staged + i, static_cast<int8_t>(tokens[i]));
      break;
    case TokenDType::kInt16:
      for (size_t i = 0; i < values; ++i) store(staged + 2 * i, static_cast<int16_t>(tokens[i]));
      break;
    case TokenDType::kUInt16:
      for (size_t i = 0; i < values; ++i) store(staged + 2 * i, static_cast<uint16_t>(tokens[i]));
      break;
    case TokenDType::kInt32:
      if (values > 0) std::memcpy(staged, tokens, values * sizeof(int32_t));
      break;
    case TokenDType::kInt64:
      for (size_t i = 0; i < values; ++i) store(staged + 8 * i, static_cast<int64_t>(tokens[i]));
      break;
    case TokenDType::kFloat32:
      for (size_t i = 0; i < values; ++i) store(staged + 4 * i, static_cast<float>(tokens[i]));
      break;
    case TokenDType::kFloat64:
      for (size_t i = 0; i < values; ++i) store(staged + 8 * i, static_cast<double>(tokens[i]));
      break;
  }
  bin_->write(staged, staging_.size());
  lengths_.push_back(static_cast<int32_t>(count));
  tokens_ += count;
}

void IndexedDatasetWriter::end_document() {
  CF_ASSERT(!finished_, "end_document after finish on ", prefix_);
  document_indices_.push_back(sequences());
}

void IndexedDatasetWriter::finish() {
  CF_ASSERT(!finished_, "finish called twice on ", prefix_);
  if (sequences() > document_indices_.back()) end_document();

  uint8_t header[kHeaderSize];
  size_t at = 0;
  std::memcpy(header, kMagic, kMagicSize);
  at += kMagicSize;
  store(header + at, kVersion);
  at += 8;
  header[at] = static_cast<uint8_t>(dtype_);
  at += 1;
  store(header + at, static_cast<uint64_t>(lengths_.size()));
  at += 8;
  store(header + at, static_cast<uint64_t>(document_indices_.size()));
  idx_->write(header, sizeof(header));
  idx_->write(lengths_.data(), lengths_.size() * sizeof(int32_t));
  // Pointers are the running byte offsets, written in blocks to bound memory.
  constexpr size_t kBlock = 1 << 16;
  std::vector<int64_t> pointers;
  pointers.reserve(std::min(kBlock, lengths_.size()));
  const int64_t item_size = static_cast<int64_t>(dtype_size(dtype_));
  int64_t pointer = 0;
  for (const int32_t length : lengths_) {
    pointers.push_back(pointer);
    pointer += static_cast<int64_t>(length) * item_size;
    if (pointers.size() == kBlock) {
      idx_->write(pointers.data(), pointers.size() * sizeof(int64_t));
      pointers.clear();
    }
  }
  idx_->write(pointers.data(), pointers.size() * sizeof(int64_t));
  idx_->write(document_indices_.data(), document_indices_.size() * sizeof(int64_t));

  // Both files durable before either name changes; then data before index, so a reader never
  // sees a new index over old data.
  bin_->sync();
  idx_->sync();
  bin_->commit();
  idx_->commit();
  finished_ = true;
}

}  // namespace chunkflow::data
