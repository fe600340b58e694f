// Each field of a config section as text, by key: for comparing two sections key by key and
// naming what differs (resume compatibility, Hugging Face config merges).
#pragma once

#include <map>
#include <sstream>
#include <string>

namespace chunkflow::configs {

// {"hidden_size": "64", "tie_word_embeddings": "false", ...} for any section with visit_fields.
template <typename Section>
std::map<std::string, std::string> field_texts(const Section& section) {
  std::map<std::string, std::string> texts;
  section.visit_fields([&](const char* key, const auto& value, const char*) {
    std::ostringstream text;
    text << std::boolalpha << value;
    texts[key] = text.str();
  });
  return texts;
}

}  // namespace chunkflow::configs
