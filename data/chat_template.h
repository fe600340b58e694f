// A model's chat template and the loss mask of a conversation: what `chunkflow-data prepare`
// does with chat lines {"messages": [{"role": ..., "content": ...}, ...]} (the format TRL,
// LLaMA-Factory and ms-swift read).
//
// The text is the model's Jinja chat template rendered as transformers' apply_chat_template
// renders it (data/jinja.h): `messages`, `tools` and `documents` (None unless the line gives
// them), `add_generation_prompt`, the tokenizer's special tokens (bos_token, eos_token, ...), and
// every other key of the line as a template variable, as apply_chat_template's keyword arguments
// are. Tokenized without added special tokens, the ids equal apply_chat_template(tokenize=True).
//
// Which tokens carry loss (LossOn):
//   assistant  every assistant message (the default): with {% generation %} blocks in the
//              template, exactly what transformers' return_assistant_tokens_mask marks; without
//              them (Qwen2.5's and Llama 3's templates), assistant message i's text is what
//              render(messages[:i+1]) adds to render(messages[:i], add_generation_prompt=True):
//              its content and the template's end-of-turn tokens, not the role header. A
//              template that does not render each conversation prefix as a prefix of the whole
//              (e.g. one that drops earlier turns' reasoning) is refused for that line, naming the
//              message.
//   last       the last assistant message only
//   all        every token
// A token carries loss when any of its bytes lies in such a text.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "data/bpe_tokenizer.h"
#include "data/jinja.h"

namespace chunkflow::data {

enum class LossOn { kAssistant, kLastAssistant, kAll };
// "assistant", "last" or "all"; throws core::Error naming the value otherwise.
LossOn parse_loss_on(const std::string& name);

class ChatTemplate {
 public:
  // The chat template of a model folder: chat_template.jinja, else tokenizer_config.json's
  // "chat_template" (a string, or a list of {name, template}: "default", and "tool_use" for lines
  // that give tools, as transformers picks them); with `template_file`, that file instead. Special
  // tokens: data/special_tokens.h.
  // Returns nullopt when the folder has no template and no file is given; throws core::Error
  // naming the file for an unreadable or unsupported template. `path`: the model folder or a file in it.
  static std::optional<ChatTemplate> find(const std::string& path, const std::string& template_file = "");

  struct Rendered {
    std::string text;
    std::vector<std::pair<size_t, size_t>> loss_spans;  // byte ranges [begin, end) of text, in order
  };
  // One chat line (a JSON object with "messages"). Throws core::Error saying what is wrong with
  // the line (no messages, a message without a role, no assistant message to learn from, an
  // error or raise_exception in the template).
  Rendered render(const nlohmann::ordered_json& line, LossOn loss_on, bool add_generation_prompt = false) const;

  const std::string& source() const { return source_; }

 private:
  const JinjaTemplate& pick(const nlohmann::ordered_json& line) const;
  // The template variables for the first `message_count` messages of a line.
  nlohmann::ordered_json variables(const nlohmann::ordered_json& line, size_t message_count, bool add_generation_prompt) const;

  std::string source_;  // the file the template came from
  std::map<std::string, JinjaTemplate> templates_;  // by name; a single template is "default"
  // What every render's variables start from: the special tokens (data/special_tokens.h), and
  // tools and documents as None.
  std::shared_ptr<const nlohmann::ordered_json> base_variables_;
};

struct ChatSample {
  std::vector<int32_t> tokens;
  std::vector<int32_t> mask;  // 1 = the token carries loss
};
// The ids and loss mask of one chat line.
ChatSample encode_chat(const ChatTemplate& chat_template, const BpeTokenizer& tokenizer, const nlohmann::ordered_json& line,
                       LossOn loss_on);

}  // namespace chunkflow::data
