// A Hugging Face model folder's special tokens, as transformers' tokenizer reads them:
// tokenizer_config.json's bos_token, eos_token, unk_token, sep_token, pad_token, cls_token,
// mask_token (each a string, or an AddedToken object {"content": ...}) and
// additional_special_tokens; when that config has no added_tokens_decoder (tokenizers saved before
// transformers 4.34), special_tokens_map.json's values replace its named tokens and add to its
// additional ones. What `--append-eos` appends and what a chat template sees as bos_token, ...
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace chunkflow::data {

struct SpecialTokens {
  std::vector<std::pair<std::string, std::string>> named;  // {"eos_token", "<|im_end|>"}, ... (set ones only)
  std::optional<std::vector<std::string>> additional;      // additional_special_tokens, when given
  // The text of a named token, or "" when the folder does not set it.
  std::string find(const std::string& name) const;
};

// `path`: the model folder, or a file in it (tokenizer.json). Missing files give no tokens; a file
// that is not JSON throws core::Error naming it.
SpecialTokens read_special_tokens(const std::string& path);

// The folder a model path names: `path` itself when it is a directory, else the file's folder.
std::string model_folder(const std::string& path);

// A JSON file parsed keeping its key order; throws core::Error "<path>: not JSON (...)".
nlohmann::ordered_json read_json_file(const std::string& path);

}  // namespace chunkflow::data
