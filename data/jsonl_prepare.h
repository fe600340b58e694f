// JSONL of tokenized samples -> Megatron indexed dataset (+ loss mask): the library behind
// `chunkflow-data prepare`. Streams the input line by line; memory does not grow with its size.
//
// Input: one JSON object per line,
//   {"input_ids": [int, ...]}                                  every token is a target
//   {"input_ids": [...], "labels": [int, ...]}                 labels[i] is -100 (not a target)
//                                                              or equal to input_ids[i] (target),
//                                                              unshifted as in Hugging Face
//   {"input_ids": [...], "loss_mask": [0|1|false|true, ...]}   1 = target
// labels / loss_mask have the length of input_ids; a line may carry at most one of them; other
// keys are ignored. With a tokenizer (PrepareOptions::tokenizer, the model's own tokenizer.json)
// a line may instead hold text,
//   {"text": "..."}                                            tokenized, every token a target
// (plus the tokenizer's end-of-text id when append_id >= 0), or a conversation,
//   {"messages": [{"role": ..., "content": ...}, ...], ...}    the model's chat template rendered
//                                                              and tokenized; loss on the tokens
//                                                              PrepareOptions::loss_on picks
// (data/chat_template.h: other keys of a chat line are template variables, e.g. "tools").
// Blank lines are skipped. Every other deviation makes the line bad: not JSON,
// not an object, input_ids missing / empty / not an array of integers in [0, vocab_size) (or
// [0, 2^31) without a vocabulary), a bad labels or loss_mask value, a length mismatch.
//
// Output (see indexed_dataset.h): <output_prefix>.bin/.idx, one sequence and one document per
// good line; and, when at least one good line had labels or loss_mask,
// loss_mask_prefix(<output_prefix>).bin/.idx with dtype uint8 (lines without a mask get all ones).
// Files appear only when the whole input was processed; a previous mask at that prefix is removed
// when the new data has none, so that it cannot be paired with the wrong tokens.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/bpe_tokenizer.h"
#include "data/chat_template.h"

namespace chunkflow::data {

struct PrepareOptions {
  std::string input;          // path of the .jsonl file
  std::string output_prefix;  // writes <prefix>.bin/.idx (parent directories are created)
  int64_t vocab_size = 0;     // > 0: every id must be < vocab_size; 0 = unchecked
  // Token dtype name (see parse_dtype), or "auto": dtype_for_vocab(vocab_size) when vocab_size
  // is given, else int32 (the dtype must be known before the first line is written).
  std::string dtype = "auto";
  // false: the first bad line throws core::Error and nothing is written. true: bad lines are
  // skipped and counted.
  bool skip_bad_lines = false;
  int64_t max_reported_errors = 20;  // messages kept in PrepareSummary::errors when skipping
  bool show_progress = true;         // core::Progress over input bytes
  // Text lines: tokenized with this tokenizer (not owned; null: token ids only), and this id
  // appended to each (-1: nothing appended).
  const BpeTokenizer* tokenizer = nullptr;
  int32_t append_id = -1;
  // Also the ids the tokenizer's post-processor puts around a text (BpeTokenizer::encode).
  bool add_special_tokens = false;
  // Chat lines: rendered with this template (not owned; null: chat lines are bad lines), loss on
  // the tokens loss_on picks.
  const ChatTemplate* chat_template = nullptr;
  LossOn loss_on = LossOn::kAssistant;
  // Why there is no chat template, when the model folder's could not be read (chat lines are then
  // bad lines with this reason; text and token-id lines do not need a template).
  std::string chat_template_refusal;
  // Lines are parsed and tokenized in batches on this many threads (0: every core), and written
  // in input order, so the output does not depend on it.
  int64_t threads = 0;
};

struct PrepareSummary {
  int64_t lines = 0;        // all lines read, blank and bad ones included
  int64_t blank_lines = 0;  // whitespace-only lines, skipped
  int64_t bad_lines = 0;    // skipped bad lines (skip_bad_lines only)
  int64_t sequences = 0;    // good lines = sequences written
  int64_t tokens = 0;       // tokens written
  // Prediction targets: mask 1 at positions >= 1 (position 0 has no context; Hugging Face drops
  // labels[0] in its shift too). Without any mask this is tokens - sequences.
  int64_t loss_tokens = 0;
  int64_t min_length = 0;   // shortest / longest sequence in tokens (0 when there are none)
  int64_t max_length = 0;
  bool has_loss_mask = false;
  std::string dtype;                // name of the token dtype written
  std::vector<std::string> errors;  // "<input>:<line>: <what>", at most max_reported_errors
  std::string token_prefix;         // the output prefix
  std::string loss_mask_prefix;     // loss_mask_prefix(token_prefix), or "" without a mask

  // Several human-readable lines (no trailing newline) for the CLI.
  std::string to_text() const;
};

// Runs the conversion described at the top of this file. Throws core::Error (naming
// "<input>:<line>") on the first bad line unless options.skip_bad_lines, and on bad options, an
// unreadable input, or an input without a single good line; nothing is written in those cases.
PrepareSummary prepare_jsonl(const PrepareOptions& options);

}  // namespace chunkflow::data
