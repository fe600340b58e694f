// A model folder's special tokens; see special_tokens.h.
#include "data/special_tokens.h"

#include <algorithm>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file_io.h"

namespace chunkflow::data {
namespace {

using nlohmann::ordered_json;

// A special token's text: a string, or an AddedToken object {"content": ...}.
std::optional<std::string> token_text(const ordered_json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string()) return value["content"].get<std::string>();
  return std::nullopt;
}

// Sets the named tokens `config` gives (replacing earlier ones) and appends its additional tokens
// that are not listed yet.
void take_tokens(const ordered_json& config, SpecialTokens& tokens) {
  static const char* names[] = {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"};
  for (const char* name : names) {
    const auto text = config.contains(name) ? token_text(config[name]) : std::nullopt;
    if (!text) continue;
    const auto found = std::find_if(tokens.named.begin(), tokens.named.end(), [&](const auto& entry) { return entry.first == name; });
    if (found != tokens.named.end()) {
      found->second = *text;
    } else {
      tokens.named.emplace_back(name, *text);
    }
  }
  if (!config.contains("additional_special_tokens") || !config["additional_special_tokens"].is_array()) return;
  if (!tokens.additional) tokens.additional.emplace();
  for (const auto& token : config["additional_special_tokens"]) {
    const auto text = token_text(token);
    if (text && std::find(tokens.additional->begin(), tokens.additional->end(), *text) == tokens.additional->end()) {
      tokens.additional->push_back(*text);
    }
  }
}

}  // namespace

std::string SpecialTokens::find(const std::string& name) const {
  const auto found = std::find_if(named.begin(), named.end(), [&](const auto& entry) { return entry.first == name; });
  return found == named.end() ? std::string() : found->second;
}

std::string model_folder(const std::string& path) {
  namespace fs = std::filesystem;
  if (fs::is_directory(path)) return path;
  const std::string parent = fs::path(path).parent_path().string();
  return parent.empty() ? std::string(".") : parent;
}

ordered_json read_json_file(const std::string& path) {
  try {
    return ordered_json::parse(core::read_file(path));
  } catch (const ordered_json::exception& error) {
    CF_FAIL(path, ": not JSON (", error.what(), ")");
  }
}

SpecialTokens read_special_tokens(const std::string& path) {
  const std::string folder = model_folder(path);
  const std::string config_path = folder + "/tokenizer_config.json", map_path = folder + "/special_tokens_map.json";
  const ordered_json config = core::path_exists(config_path) ? read_json_file(config_path) : ordered_json::object();
  SpecialTokens tokens;
  take_tokens(config, tokens);
  // As transformers 4.57 loads a tokenizer: a config with added_tokens_decoder (every tokenizer
  // saved since 4.34) is complete; an older one is overridden by special_tokens_map.json.
  if (!config.contains("added_tokens_decoder") && core::path_exists(map_path)) take_tokens(read_json_file(map_path), tokens);
  return tokens;
}

}  // namespace chunkflow::data
