// Chat templates and conversation loss masks; see chat_template.h.
#include "data/chat_template.h"

#include <algorithm>
#include <memory>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file_io.h"
#include "core/strings.h"
#include "data/special_tokens.h"

namespace chunkflow::data {
using nlohmann::ordered_json;

LossOn parse_loss_on(const std::string& name) {
  if (name == "assistant") return LossOn::kAssistant;
  if (name == "last") return LossOn::kLastAssistant;
  if (name == "all") return LossOn::kAll;
  CF_FAIL("loss-on '", name, "' is not one of assistant, last, all", core::did_you_mean(name, {"assistant", "last", "all"}));
}

std::optional<ChatTemplate> ChatTemplate::find(const std::string& path, const std::string& template_file) {
  const std::string folder = model_folder(path);
  const std::string config_path = folder + "/tokenizer_config.json";
  const ordered_json config = core::path_exists(config_path) ? read_json_file(config_path) : ordered_json::object();

  ChatTemplate chat;
  const std::string jinja_path = folder + "/chat_template.jinja";
  if (!template_file.empty()) {
    CF_CHECK(core::path_exists(template_file), "--chat-template ", template_file, " does not exist");
    chat.source_ = template_file;
    chat.templates_.emplace("default", JinjaTemplate::parse(core::read_file(template_file), template_file));
  } else if (core::path_exists(jinja_path)) {  // transformers prefers the file to the config entry
    chat.source_ = jinja_path;
    chat.templates_.emplace("default", JinjaTemplate::parse(core::read_file(jinja_path), jinja_path));
  } else if (config.contains("chat_template") && !config["chat_template"].is_null()) {
    chat.source_ = config_path;
    const ordered_json& entry = config["chat_template"];
    if (entry.is_string()) {
      chat.templates_.emplace("default", JinjaTemplate::parse(entry.get<std::string>(), config_path + " (chat_template)"));
    } else {
      CF_CHECK(entry.is_array(), config_path, ": chat_template is ", entry.type_name(), ", expected a string or a list of {name, template}");
      for (const auto& named : entry) {
        CF_CHECK(named.is_object() && named.contains("name") && named["name"].is_string() && named.contains("template") &&
                     named["template"].is_string(),
                 config_path, ": each chat_template entry must be {\"name\": ..., \"template\": ...}");
        const std::string name = named["name"].get<std::string>();
        chat.templates_.emplace(name, JinjaTemplate::parse(named["template"].get<std::string>(),
                                                           config_path + " (chat_template '" + name + "')"));
      }
    }
  } else {
    return std::nullopt;
  }
  // The variables every render starts from: the special tokens, and tools / documents = None.
  const SpecialTokens special = read_special_tokens(folder);
  auto base = std::make_shared<ordered_json>(ordered_json::object());
  for (const auto& [name, text] : special.named) (*base)[name] = text;
  if (special.additional) (*base)["additional_special_tokens"] = *special.additional;
  (*base)["tools"] = nullptr;
  (*base)["documents"] = nullptr;
  chat.base_variables_ = std::move(base);
  return chat;
}

const JinjaTemplate& ChatTemplate::pick(const ordered_json& line) const {
  const bool has_tools = line.contains("tools") && !line["tools"].is_null();
  if (has_tools && templates_.count("tool_use")) return templates_.at("tool_use");
  const auto found = templates_.find("default");
  if (found != templates_.end()) return found->second;
  std::vector<std::string> names;
  for (const auto& entry : templates_) names.push_back(entry.first);
  CF_FAIL(source_, ": no chat template named 'default' (it has ", core::join(names, ", "), ")");
}

ordered_json ChatTemplate::variables(const ordered_json& line, size_t message_count, bool add_generation_prompt) const {
  ordered_json variables = *base_variables_;
  for (const auto& item : line.items()) {
    if (item.key() != "messages") variables[item.key()] = item.value();
  }
  const ordered_json& messages = line["messages"];
  variables["messages"] = ordered_json(messages.begin(), messages.begin() + static_cast<std::ptrdiff_t>(message_count));
  variables["add_generation_prompt"] = add_generation_prompt;
  return variables;
}

ChatTemplate::Rendered ChatTemplate::render(const ordered_json& line, LossOn loss_on, bool add_generation_prompt) const {
  CF_CHECK(line.is_object() && line.contains("messages"), "expected a JSON object with \"messages\"");
  const ordered_json& messages = line["messages"];
  CF_CHECK(messages.is_array() && !messages.empty(), "\"messages\" must be a non-empty list of {\"role\": ..., \"content\": ...}");
  std::vector<size_t> assistants;
  std::vector<std::string> roles;
  for (size_t i = 0; i < messages.size(); ++i) {
    CF_CHECK(messages[i].is_object() && messages[i].contains("role") && messages[i]["role"].is_string(), "messages[", i,
             "] has no \"role\" string");
    roles.push_back(messages[i]["role"].get<std::string>());
    if (roles.back() == "assistant") assistants.push_back(i);
  }
  const JinjaTemplate& chosen = pick(line);
  JinjaTemplate::Rendered whole = chosen.render(variables(line, messages.size(), add_generation_prompt));
  Rendered rendered;
  rendered.text = std::move(whole.text);
  if (loss_on == LossOn::kAll) {
    rendered.loss_spans.emplace_back(0, rendered.text.size());
    return rendered;
  }
  CF_CHECK(!assistants.empty(), "no assistant message to learn from (roles: ", core::join(roles, ", "),
           "); use --loss-on all to train on every token");
  if (chosen.has_generation_blocks()) {
    rendered.loss_spans = std::move(whole.generation_spans);
    if (loss_on == LossOn::kLastAssistant && !rendered.loss_spans.empty()) {
      rendered.loss_spans.erase(rendered.loss_spans.begin(), rendered.loss_spans.end() - 1);
    }
    return rendered;
  }
  const size_t first = loss_on == LossOn::kLastAssistant ? assistants.size() - 1 : 0;
  for (size_t k = first; k < assistants.size(); ++k) {
    const size_t index = assistants[k];
    const std::string before = chosen.render(variables(line, index, true)).text;
    // The usual last message: the conversation through it is the whole render, already done.
    const bool through_is_whole = index + 1 == messages.size() && !add_generation_prompt;
    const std::string through = through_is_whole ? rendered.text : chosen.render(variables(line, index + 1, false)).text;
    CF_CHECK(through.compare(0, before.size(), before) == 0 && rendered.text.compare(0, through.size(), through) == 0,
             "messages[", index, "] (assistant): the chat template does not render the conversation up to this message "
             "as the start of the whole conversation, so its tokens cannot be told apart; use a template with "
             "{% generation %} blocks (--chat-template) or --loss-on all");
    if (through.size() > before.size()) rendered.loss_spans.emplace_back(before.size(), through.size());
  }
  return rendered;
}

ChatSample encode_chat(const ChatTemplate& chat_template, const BpeTokenizer& tokenizer, const ordered_json& line, LossOn loss_on) {
  const ChatTemplate::Rendered rendered = chat_template.render(line, loss_on);
  ChatSample sample;
  std::vector<BpeTokenizer::TokenRange> ranges;
  sample.tokens = tokenizer.encode(rendered.text, false, &ranges);
  sample.mask.assign(sample.tokens.size(), 0);
  // Spans and token ranges are both in text order: one sweep marks the overlaps.
  size_t span = 0;
  for (size_t t = 0; t < sample.tokens.size(); ++t) {
    while (span < rendered.loss_spans.size() && rendered.loss_spans[span].second <= ranges[t].begin) ++span;
    if (span < rendered.loss_spans.size() && rendered.loss_spans[span].first < ranges[t].end) sample.mask[t] = 1;
  }
  return sample;
}

}  // namespace chunkflow::data
