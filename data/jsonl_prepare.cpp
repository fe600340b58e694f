// Streaming JSONL -> indexed dataset conversion; see jsonl_prepare.h.
#include "data/jsonl_prepare.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file_io.h"
#include "core/logging.h"
#include "core/progress.h"
#include "core/strings.h"
#include "data/indexed_dataset.h"

namespace chunkflow::data {
namespace {

using nlohmann::json;

// Hugging Face's ignore index in `labels`.
constexpr int64_t kIgnoreIndex = -100;
// Offending values longer than this are cut in messages.
constexpr size_t kMaxValueChars = 40;

std::string short_value(const json& value) {
  std::string text = value.dump();
  if (text.size() > kMaxValueChars) text = text.substr(0, kMaxValueChars) + "...";
  return text;
}

// JSON integers (signed or unsigned) as int64; unsigned values above int64 saturate, which every
// caller rejects as out of range anyway. False for anything that is not an integer.
bool as_int64(const json& value, int64_t& out) {
  if (value.is_number_unsigned()) {
    const uint64_t unsigned_value = value.get<uint64_t>();
    out = unsigned_value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())
              ? std::numeric_limits<int64_t>::max()
              : static_cast<int64_t>(unsigned_value);
    return true;
  }
  if (value.is_number_integer()) {
    out = value.get<int64_t>();
    return true;
  }
  return false;
}

// One good line: tokens [length] and the 0/1 mask [length] (all ones without labels/loss_mask).
struct Sample {
  std::vector<int32_t> tokens;
  std::vector<int32_t> mask;
  bool has_mask = false;
};

std::string check_input_ids(const json& ids, int64_t vocab_size, TokenDType dtype,
                            std::vector<int32_t>& tokens) {
  if (!ids.is_array()) {
    return core::str_cat("\"input_ids\" is ", short_value(ids), ", expected an array of token ids");
  }
  if (ids.empty()) return "\"input_ids\" is empty";
  tokens.clear();
  tokens.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    int64_t id = 0;
    if (!as_int64(ids[i], id)) {
      return core::str_cat("input_ids[", i, "] is ", short_value(ids[i]),
                           ", expected a non-negative integer token id");
    }
    if (id < 0) return core::str_cat("input_ids[", i, "] is ", id, "; token ids must be >= 0");
    if (vocab_size > 0 && id >= vocab_size) {
      return core::str_cat("input_ids[", i, "] is ", id, ", not below vocab_size ", vocab_size);
    }
    if (id > std::numeric_limits<int32_t>::max()) {
      return core::str_cat("input_ids[", i, "] is ", id, ", beyond the int32 range of token ids");
    }
    if (!fits_dtype(dtype, id)) {
      return core::str_cat("input_ids[", i, "] is ", id, ", which dtype ", dtype_name(dtype),
                           " cannot hold; use a wider dtype such as int32");
    }
    tokens.push_back(static_cast<int32_t>(id));
  }
  return "";
}

std::string check_labels(const json& labels, const std::vector<int32_t>& tokens,
                         std::vector<int32_t>& mask) {
  if (!labels.is_array()) {
    return core::str_cat("\"labels\" is ", short_value(labels),
                         ", expected an array like input_ids with -100 for non-targets");
  }
  if (labels.size() != tokens.size()) {
    return core::str_cat("\"labels\" has ", labels.size(), " values but \"input_ids\" has ",
                         tokens.size());
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    int64_t label = 0;
    const bool integer = as_int64(labels[i], label);
    if (integer && label == kIgnoreIndex) {
      mask[i] = 0;
    } else if (integer && label == tokens[i]) {
      mask[i] = 1;
    } else {
      return core::str_cat("labels[", i, "] is ", short_value(labels[i]), " but input_ids[", i,
                           "] is ", tokens[i],
                           "; each label must be -100 or equal its input id (unshifted labels, "
                           "as in Hugging Face)");
    }
  }
  return "";
}

std::string check_loss_mask(const json& values, const std::vector<int32_t>& tokens,
                            std::vector<int32_t>& mask) {
  if (!values.is_array()) {
    return core::str_cat("\"loss_mask\" is ", short_value(values), ", expected an array of 0/1");
  }
  if (values.size() != tokens.size()) {
    return core::str_cat("\"loss_mask\" has ", values.size(), " values but \"input_ids\" has ",
                         tokens.size());
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    const json& value = values[i];
    int64_t number = 0;
    if (value.is_boolean()) {
      mask[i] = value.get<bool>() ? 1 : 0;
    } else if (as_int64(value, number) && (number == 0 || number == 1)) {
      mask[i] = static_cast<int32_t>(number);
    } else {
      return core::str_cat("loss_mask[", i, "] is ", short_value(value),
                           ", expected 0, 1, false or true");
    }
  }
  return "";
}

// The tokenizer's ids must fit the vocabulary (--vocab-size) and the dataset's dtype.
std::string check_tokenizer_ids(const std::vector<int32_t>& ids, int64_t vocab_size, TokenDType dtype) {
  for (const int32_t id : ids) {
    if ((vocab_size > 0 && id >= vocab_size) || !fits_dtype(dtype, id)) {
      return core::str_cat("the tokenizer gave id ", id, ", beyond vocab_size ", vocab_size, " or dtype ", dtype_name(dtype));
    }
  }
  return "";
}

// A text line: the tokenizer's ids (+ the appended id), every token a target.
std::string tokenize_text(const json& text, const PrepareOptions& options, int64_t vocab_size, TokenDType dtype,
                          Sample& sample) {
  if (!text.is_string()) return core::str_cat("\"text\" is ", short_value(text), ", expected a string");
  try {
    sample.tokens = options.tokenizer->encode(text.get<std::string>(), options.add_special_tokens);
  } catch (const core::Error& error) {
    return core::str_cat("\"text\": ", error.what());
  }
  if (options.append_id >= 0) sample.tokens.push_back(options.append_id);
  if (sample.tokens.empty()) return "\"text\" is empty";
  if (std::string error = check_tokenizer_ids(sample.tokens, vocab_size, dtype); !error.empty()) return error;
  sample.mask.assign(sample.tokens.size(), 1);
  sample.has_mask = false;
  return "";
}

// A chat line: the model's chat template rendered and tokenized, with its loss mask. The line is
// parsed again keeping its key order, in which the template sees its dicts (as Python's json
// gives them); token-id and text lines keep the faster sorted parse.
std::string tokenize_chat(const std::string& line, const PrepareOptions& options, int64_t vocab_size, TokenDType dtype,
                          Sample& sample) {
  if (options.chat_template == nullptr && !options.chat_template_refusal.empty()) {
    return "a chat line needs the model's chat template, which cannot be used: " + options.chat_template_refusal;
  }
  if (options.chat_template == nullptr) {
    return core::str_cat("a chat line needs a chat template: the tokenizer folder ", options.tokenizer->source(),
                         " has none (chat_template.jinja, or chat_template in tokenizer_config.json); give one with "
                         "--chat-template FILE");
  }
  ChatSample chat;
  try {
    chat = encode_chat(*options.chat_template, *options.tokenizer, nlohmann::ordered_json::parse(line), options.loss_on);
  } catch (const core::Error& error) {
    return error.what();
  }
  if (chat.tokens.empty()) return "the chat template rendered an empty text";
  if (std::string error = check_tokenizer_ids(chat.tokens, vocab_size, dtype); !error.empty()) return error;
  sample.tokens = std::move(chat.tokens);
  sample.mask = std::move(chat.mask);
  sample.has_mask = options.loss_on != LossOn::kAll;
  return "";
}

// Fills `sample` from one non-blank line; returns "" when the line is good, else what is wrong.
std::string parse_line(const std::string& line, const PrepareOptions& options, int64_t vocab_size, TokenDType dtype,
                       Sample& sample) {
  json object;
  try {
    object = json::parse(line);
  } catch (const json::exception& error) {
    // Not only parse_error: a number beyond double range ("1e999") throws out_of_range.406.
    // Drop nlohmann's "[json.exception.parse_error.101] " prefix; keep its position and reason.
    std::string what = error.what();
    const size_t bracket = what.find("] ");
    if (bracket != std::string::npos) what = what.substr(bracket + 2);
    return "not valid JSON (" + what + ")";
  }
  if (!object.is_object()) {
    return core::str_cat("expected a JSON object with \"input_ids\", got ", short_value(object));
  }
  const auto ids = object.find("input_ids");
  const auto text = object.find("text");
  const auto messages = object.find("messages");
  if (options.tokenizer != nullptr && (text != object.end() || messages != object.end())) {
    if (static_cast<int>(ids != object.end()) + static_cast<int>(text != object.end()) + static_cast<int>(messages != object.end()) > 1) {
      return "has more than one of \"input_ids\", \"text\" and \"messages\"; give one of them";
    }
    if (messages != object.end()) return tokenize_chat(line, options, vocab_size, dtype, sample);
    return tokenize_text(*text, options, vocab_size, dtype, sample);
  }
  if (ids == object.end()) {
    std::vector<std::string> keys;
    for (const auto& item : object.items()) keys.push_back(item.key());
    return core::str_cat("missing \"input_ids\" (keys: ", keys.empty() ? "none" : core::join(keys, ", "), ")",
                         options.tokenizer != nullptr ? "; lines hold \"input_ids\", \"text\" or \"messages\""
                                                      : "; lines must hold token ids, or text / messages with --tokenizer");
  }
  std::string error = check_input_ids(*ids, vocab_size, dtype, sample.tokens);
  if (!error.empty()) return error;

  const auto labels = object.find("labels");
  const auto loss_mask = object.find("loss_mask");
  if (labels != object.end() && loss_mask != object.end()) {
    return "has both \"labels\" and \"loss_mask\"; give one of them";
  }
  sample.mask.assign(sample.tokens.size(), 1);
  sample.has_mask = labels != object.end() || loss_mask != object.end();
  if (labels != object.end()) return check_labels(*labels, sample.tokens, sample.mask);
  if (loss_mask != object.end()) return check_loss_mask(*loss_mask, sample.tokens, sample.mask);
  return "";
}

bool is_blank(const std::string& line) {
  return std::all_of(line.begin(), line.end(),
                     [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; });
}

TokenDType choose_dtype(const PrepareOptions& options, int64_t vocab_size) {
  if (options.dtype == "auto") {
    return vocab_size > 0 ? dtype_for_vocab(vocab_size) : TokenDType::kInt32;
  }
  const TokenDType dtype = parse_dtype(options.dtype);
  CF_CHECK(vocab_size == 0 || fits_dtype(dtype, vocab_size - 1), "dtype ",
           options.dtype, " cannot hold token ids up to vocab_size - 1 = ",
           vocab_size - 1, "; use int32 or auto");
  return dtype;
}

// Parses (and tokenizes) a batch of lines on `threads` threads; results in input order.
void parse_batch(const std::vector<std::string>& lines, const PrepareOptions& options, int64_t vocab_size,
                 TokenDType dtype, int64_t threads, std::vector<Sample>& samples, std::vector<std::string>& errors) {
  samples.assign(lines.size(), Sample{});
  errors.assign(lines.size(), std::string());
  const auto work = [&](size_t first) {
    for (size_t i = first; i < lines.size(); i += static_cast<size_t>(threads)) {
      errors[i] = parse_line(lines[i], options, vocab_size, dtype, samples[i]);
    }
  };
  if (threads <= 1 || lines.size() < 2) {
    work(0);
    return;
  }
  std::vector<std::thread> workers;
  for (int64_t t = 1; t < threads; ++t) workers.emplace_back(work, static_cast<size_t>(t));
  work(0);
  for (std::thread& worker : workers) worker.join();
}

void remove_stale_mask(const std::string& mask_prefix) {
  for (const std::string& path : {bin_path(mask_prefix), idx_path(mask_prefix)}) {
    if (!core::path_exists(path)) continue;
    std::error_code error;
    std::filesystem::remove(path, error);
    CF_CHECK(!error, "cannot remove the stale loss mask '", path, "': ", error.message(),
             "; remove it by hand, it does not belong to the new data");
    core::log_warn("removed '", path, "': the new data has no loss mask");
  }
}

}  // namespace

PrepareSummary prepare_jsonl(const PrepareOptions& options) {
  CF_CHECK(!options.input.empty(), "prepare: no input file given");
  CF_CHECK(!options.output_prefix.empty(), "prepare: no output prefix given");
  CF_CHECK(options.vocab_size >= 0, "prepare: vocab_size must be >= 0 (0 = unchecked), got ",
           options.vocab_size);
  CF_CHECK(options.max_reported_errors >= 0, "prepare: max_reported_errors must be >= 0, got ",
           options.max_reported_errors);
  CF_CHECK(options.tokenizer != nullptr || (options.append_id < 0 && !options.add_special_tokens),
           "prepare: append_id and add_special_tokens need a tokenizer");
  CF_CHECK(options.threads >= 0, "prepare: threads must be >= 0 (0 = every core), got ", options.threads);
  // With a tokenizer its vocabulary bounds the ids unless a vocab_size is given.
  const int64_t vocab_size =
      options.vocab_size > 0 ? options.vocab_size : options.tokenizer != nullptr ? options.tokenizer->vocab_size() : 0;
  const TokenDType dtype = choose_dtype(options, vocab_size);
  const int64_t threads =
      options.threads > 0 ? options.threads : std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()));

  std::error_code fs_error;
  CF_CHECK(std::filesystem::exists(options.input, fs_error), "prepare: input '", options.input,
           "' does not exist");
  CF_CHECK(!std::filesystem::is_directory(options.input, fs_error), "prepare: input '",
           options.input, "' is a directory, expected a .jsonl file");
  std::ifstream in(options.input, std::ios::binary);
  CF_CHECK(in.is_open(), "prepare: cannot open input '", options.input, "': ",
           std::strerror(errno));
  const bool regular = std::filesystem::is_regular_file(options.input, fs_error);
  const int64_t input_bytes =
      regular ? static_cast<int64_t>(std::filesystem::file_size(options.input, fs_error)) : 0;

  const std::filesystem::path parent = std::filesystem::path(options.output_prefix).parent_path();
  if (!parent.empty()) core::make_directories(parent.string());

  PrepareSummary summary;
  summary.token_prefix = options.output_prefix;
  summary.dtype = dtype_name(dtype);
  const std::string mask_prefix = loss_mask_prefix(options.output_prefix);
  IndexedDatasetWriter token_writer(options.output_prefix, dtype);
  IndexedDatasetWriter mask_writer(mask_prefix, TokenDType::kUInt8);

  std::optional<core::Progress> progress;
  if (options.show_progress) progress.emplace("prepare " + options.input, input_bytes, "bytes");

  // Lines are read, parsed in parallel batches, then written one by one in input order.
  constexpr size_t kBatchLines = 2048;
  std::vector<std::string> batch;
  std::vector<int64_t> batch_line_numbers;
  std::vector<Sample> samples;
  std::vector<std::string> errors;
  const auto write_batch = [&] {
    parse_batch(batch, options, vocab_size, dtype, threads, samples, errors);
    for (size_t i = 0; i < batch.size(); ++i) {
      if (!errors[i].empty()) {
        const std::string message = core::str_cat(options.input, ":", batch_line_numbers[i], ": ", errors[i]);
        CF_CHECK(options.skip_bad_lines, message,
                 " (nothing was written; to skip bad lines instead, use --skip-bad-lines)");
        ++summary.bad_lines;
        if (static_cast<int64_t>(summary.errors.size()) < options.max_reported_errors) {
          summary.errors.push_back(message);
        }
        continue;
      }
      const Sample& sample = samples[i];
      token_writer.add_sequence(sample.tokens);
      token_writer.end_document();
      mask_writer.add_sequence(sample.mask);
      mask_writer.end_document();

      const int64_t length = static_cast<int64_t>(sample.tokens.size());
      summary.min_length = summary.sequences == 0 ? length : std::min(summary.min_length, length);
      summary.max_length = std::max(summary.max_length, length);
      ++summary.sequences;
      summary.tokens += length;
      summary.loss_tokens += std::count(sample.mask.begin() + 1, sample.mask.end(), 1);
      summary.has_loss_mask = summary.has_loss_mask || sample.has_mask;
    }
    batch.clear();
    batch_line_numbers.clear();
  };
  std::string line;
  int64_t bytes_read = 0;
  while (std::getline(in, line)) {
    ++summary.lines;
    bytes_read += static_cast<int64_t>(line.size()) + 1;
    if (progress) {
      progress->update(input_bytes > 0 ? std::min(bytes_read, input_bytes) : bytes_read);
    }
    if (is_blank(line)) {
      ++summary.blank_lines;
      continue;
    }
    batch.push_back(std::move(line));
    batch_line_numbers.push_back(summary.lines);
    if (batch.size() == kBatchLines) write_batch();
  }
  write_batch();
  CF_CHECK(!in.bad(), "prepare: error reading '", options.input, "' after line ", summary.lines,
           ": ", std::strerror(errno), "; nothing was written");
  CF_CHECK(summary.sequences > 0, options.input, ": no usable lines (", summary.lines,
           " lines: ", summary.blank_lines, " blank, ", summary.bad_lines,
           " bad); nothing was written");

  token_writer.finish();
  if (summary.has_loss_mask) {
    mask_writer.finish();
    summary.loss_mask_prefix = mask_prefix;
  } else {
    remove_stale_mask(mask_prefix);
  }
  if (progress) progress->finish();
  return summary;
}

std::string PrepareSummary::to_text() const {
  std::ostringstream out;
  out << "wrote " << token_prefix << ".bin/.idx (dtype " << dtype << ")\n";
  out << "  lines: " << lines << " (" << sequences << " sequences, " << blank_lines << " blank, "
      << bad_lines << " bad skipped)\n";
  out << "  tokens: " << tokens;
  if (sequences > 0) {
    out << " (per sequence: min " << min_length << ", mean "
        << core::format_fixed(static_cast<double>(tokens) / static_cast<double>(sequences), 1)
        << ", max " << max_length << ")";
  }
  out << "\n  loss tokens: " << loss_tokens;
  if (tokens > 0) {
    out << " (" << core::format_fixed(100.0 * static_cast<double>(loss_tokens) /
                                          static_cast<double>(tokens), 1)
        << "% of tokens)";
  }
  out << "\n  loss mask: ";
  if (has_loss_mask) {
    out << loss_mask_prefix << ".bin/.idx";
  } else {
    out << "none (no line had labels, loss_mask or messages with loss on some tokens; every token is a target)";
  }
  if (!errors.empty()) {
    out << "\n  bad lines (first " << errors.size() << " of " << bad_lines << "):";
    for (const std::string& error : errors) out << "\n    " << error;
  }
  return out.str();
}

}  // namespace chunkflow::data
