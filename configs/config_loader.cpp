// YAML <-> Config; see config_loader.h. Typing is stricter than yaml-cpp's as<T>(): an integer
// key takes only a plain decimal integer, a bool only true/false, a float a plain number; quoted
// scalars are strings. Every value read is remembered with its source so that validate()'s
// messages can point at the line that set it.
#include "configs/config_loader.h"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <map>
#include <sstream>

#include "core/error.h"
#include "core/file_io.h"
#include "core/strings.h"

namespace chunkflow::configs {
namespace {

// Dotted key -> where its value came from: "run.yaml:12" or "--set chunking.chunk_size=8192".
using Locations = std::map<std::string, std::string>;

std::string line_of(const std::string& source, const YAML::Mark& mark) {
  return source + ":" + std::to_string(mark.line + 1);
}

std::string line_and_column_of(const std::string& source, const YAML::Mark& mark) {
  return line_of(source, mark) + ":" + std::to_string(mark.column + 1);
}

// A plain (unquoted, untagged) scalar: the only kind that may be a number or a bool.
bool is_plain(const YAML::Node& node) { return node.IsScalar() && node.Tag() == "?"; }

std::string describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null: return "null (an empty value)";
    case YAML::NodeType::Sequence: return "a sequence";
    case YAML::NodeType::Map: return "a map";
    case YAML::NodeType::Scalar:
      return is_plain(node) ? node.Scalar() : format_value(node.Scalar()) + " (a quoted string)";
    case YAML::NodeType::Undefined: break;
  }
  return "nothing";
}

[[noreturn]] void type_error(const std::string& key, const std::string& expected,
                             const YAML::Node& node, const std::string& at,
                             const std::string& hint = "") {
  throw ConfigError(key, key + " must be " + expected + ", got " + describe(node) + hint + " (" +
                             at + ")");
}

// YAML 1.2 core-schema numbers, decimal only, scanned by hand: std::regex matches recursively,
// one stack frame per character, so a long value (100,000 digits) overflowed the stack.

// Skips the digits at text[at...]; returns how many there were.
size_t skip_digits(const std::string& text, size_t& at) {
  const size_t start = at;
  while (at < text.size() && text[at] >= '0' && text[at] <= '9') ++at;
  return at - start;
}

void skip_sign(const std::string& text, size_t& at) {
  if (at < text.size() && (text[at] == '-' || text[at] == '+')) ++at;
}

// [-+]?[0-9]+
bool is_integer_text(const std::string& text) {
  size_t at = 0;
  skip_sign(text, at);
  return skip_digits(text, at) > 0 && at == text.size();
}

// [-+]?(.[0-9]+|[0-9]+(.[0-9]*)?)([eE][-+]?[0-9]+)?  (the dots are literal)
bool is_float_text(const std::string& text) {
  size_t at = 0;
  skip_sign(text, at);
  if (at < text.size() && text[at] == '.') {
    ++at;
    if (skip_digits(text, at) == 0) return false;
  } else {
    if (skip_digits(text, at) == 0) return false;
    if (at < text.size() && text[at] == '.') {
      ++at;
      skip_digits(text, at);
    }
  }
  if (at < text.size() && (text[at] == 'e' || text[at] == 'E')) {
    ++at;
    skip_sign(text, at);
    if (skip_digits(text, at) == 0) return false;
  }
  return at == text.size();
}

void read_value(const YAML::Node& node, const std::string& key, const std::string& at,
                int64_t& field) {
  if (!is_plain(node) || !is_integer_text(node.Scalar())) {
    type_error(key, "an integer", node, at);
  }
  errno = 0;
  const long long value = std::strtoll(node.Scalar().c_str(), nullptr, 10);
  if (errno == ERANGE) type_error(key, "an integer that fits in 64 bits", node, at);
  field = value;
}

void read_value(const YAML::Node& node, const std::string& key, const std::string& at,
                double& field) {
  if (!is_plain(node) || !is_float_text(node.Scalar())) {
    type_error(key, "a number", node, at);
  }
  errno = 0;
  const double value = std::strtod(node.Scalar().c_str(), nullptr);
  if (errno == ERANGE || !std::isfinite(value)) {
    type_error(key, "a finite number in double range", node, at);
  }
  field = value;
}

void read_value(const YAML::Node& node, const std::string& key, const std::string& at,
                bool& field) {
  if (!is_plain(node) || (node.Scalar() != "true" && node.Scalar() != "false")) {
    type_error(key, "true or false", node, at);
  }
  field = node.Scalar() == "true";
}

void read_value(const YAML::Node& node, const std::string& key, const std::string& at,
                std::string& field) {
  if (node.IsNull()) type_error(key, "a string", node, at, "; write \"\" for an empty string");
  if (!node.IsScalar()) type_error(key, "a string", node, at);
  field = node.Scalar();
}

template <typename Section>
std::vector<std::string> field_names(const Section& section) {
  std::vector<std::string> names;
  section.visit_fields([&](const char* name, const auto&, const char*) { names.emplace_back(name); });
  return names;
}

std::vector<std::string> section_names() {
  std::vector<std::string> names;
  Config().visit_sections([&](const char* name, const auto&) { names.emplace_back(name); });
  return names;
}

// Sets `section.<name>` from `value`; throws the unknown-key error (with a suggestion) when the
// section has no such key.
template <typename Section>
void set_field(Section& section, const std::string& section_name, const std::string& name,
               const YAML::Node& value, const std::string& at) {
  const std::string key = section_name + "." + name;
  bool found = false;
  section.visit_fields([&](const char* field_name, auto& field, const char*) {
    if (name != field_name) return;
    read_value(value, key, at, field);
    found = true;
  });
  if (!found) {
    throw ConfigError(key, "unknown key " + key + " in " + at +
                               core::did_you_mean(name, field_names(section)));
  }
}

// Calls apply(section) on the section called `name`; false when there is none.
template <typename Apply>
bool with_section(Config& config, const std::string& name, Apply&& apply) {
  bool found = false;
  config.visit_sections([&](const char* section_name, auto& section) {
    if (name != section_name) return;
    apply(section);
    found = true;
  });
  return found;
}

std::string key_text(const YAML::Node& key, const std::string& what, const std::string& source) {
  if (!key.IsScalar()) {
    throw ConfigError("", line_of(source, key.Mark()) + ": " + what + " must be a plain name, got " +
                              describe(key));
  }
  return key.Scalar();
}

void read_section(Config& config, const std::string& name, const YAML::Node& body,
                  const std::string& source, Locations& locations) {
  if (body.IsNull()) return;  // "chunking:" with every key commented out
  if (!body.IsMap()) {
    throw ConfigError(name, "section " + name + " in " + line_of(source, body.Mark()) +
                                " must be a map of keys, got " + describe(body));
  }
  std::map<std::string, std::string> seen;  // key name -> where first set
  with_section(config, name, [&](auto& section) {
    for (const auto& entry : body) {
      const std::string field = key_text(entry.first, "a key of section " + name, source);
      const std::string key = name + "." + field;
      const std::string at = line_of(source, entry.first.Mark());
      if (const auto it = seen.find(field); it != seen.end()) {
        throw ConfigError(key, "duplicate key " + key + " in " + at + "; it is already set at " +
                                   it->second);
      }
      seen[field] = at;
      set_field(section, name, field, entry.second, at);
      locations[key] = at;
    }
  });
}

void read_document(Config& config, const YAML::Node& root, const std::string& source,
                   Locations& locations) {
  if (root.IsNull()) return;
  if (!root.IsMap()) {
    throw ConfigError("", line_and_column_of(source, root.Mark()) +
                              ": the top level of a config must be a map of sections (" +
                              core::join(section_names(), ", ") + "), got " + describe(root));
  }
  std::map<std::string, std::string> seen;
  for (const auto& entry : root) {
    const std::string name = key_text(entry.first, "a section name", source);
    const std::string at = line_of(source, entry.first.Mark());
    if (const auto it = seen.find(name); it != seen.end()) {
      throw ConfigError(name, "duplicate section " + name + " in " + at +
                                  "; it already appears at " + it->second);
    }
    seen[name] = at;
    const auto names = section_names();
    if (std::find(names.begin(), names.end(), name) == names.end()) {
      throw ConfigError(name, "unknown section " + name + " in " + at +
                                  core::did_you_mean(name, names));
    }
    read_section(config, name, entry.second, source, locations);
  }
}

// Notes where each document of a YAML stream starts; everything else is ignored.
class DocumentStarts : public YAML::EventHandler {
 public:
  const std::vector<YAML::Mark>& starts() const { return starts_; }

  void OnDocumentStart(const YAML::Mark& mark) override { starts_.push_back(mark); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}

 private:
  std::vector<YAML::Mark> starts_;
};

// yaml-cpp 0.7 (Debian 12) never returns from LoadAll, allocating an empty document per turn,
// when a ',' stands at the top level (jbeder/yaml-cpp#1040; fixed upstream by #1319): the parser
// reports a document without consuming the token. Walking the documents first, a document that
// starts where the previous one did is that case.
void check_documents_advance(const std::string& text, const std::string& source) {
  std::istringstream stream(text);
  YAML::Parser parser(stream);
  DocumentStarts documents;
  while (parser.HandleNextDocument(documents)) {
    const auto& starts = documents.starts();
    if (starts.size() >= 2 && starts.back().pos <= starts[starts.size() - 2].pos) {
      throw ConfigError("", line_and_column_of(source, starts.back()) +
                                ": malformed YAML: the parser cannot get past this token (a ',' "
                                "outside [...] or {...}?)");
    }
  }
}

YAML::Node parse_document(const std::string& text, const std::string& source) {
  std::vector<YAML::Node> documents;
  try {
    check_documents_advance(text, source);
    documents = YAML::LoadAll(text);
  } catch (const YAML::Exception& error) {
    throw ConfigError("", line_and_column_of(source, error.mark) + ": malformed YAML: " + error.msg);
  }
  if (documents.empty()) return YAML::Node();
  if (documents.size() > 1) {
    throw ConfigError("", line_of(source, documents[1].Mark()) +
                              ": a config is one YAML document, found " +
                              std::to_string(documents.size()) + " (remove the '---' separators)");
  }
  return documents.front();
}

void apply_override(Config& config, const std::string& text, Locations& locations) {
  const std::string at = "--set " + text;
  const auto fail_malformed = [&](const std::string& why) {
    throw ConfigError("", "malformed override '" + text + "' (" + why +
                              "): expected section.key=value, e.g. --set chunking.chunk_size=8192");
  };
  const size_t equals = text.find('=');
  if (equals == std::string::npos) fail_malformed("no '='");
  const std::string key = text.substr(0, equals);
  const size_t dot = key.find('.');
  if (dot == std::string::npos) fail_malformed("no '.' between section and key");
  const std::string section_name = key.substr(0, dot);
  const std::string field = key.substr(dot + 1);
  if (section_name.empty() || field.empty()) fail_malformed("empty section or key");

  YAML::Node value;
  try {
    value = YAML::Load(text.substr(equals + 1));
  } catch (const YAML::Exception& error) {
    throw ConfigError(key, "malformed value in " + at + ": " + error.msg);
  }
  const bool found = with_section(config, section_name, [&](auto& section) {
    set_field(section, section_name, field, value, at);
  });
  if (!found) {
    throw ConfigError(key, "unknown section " + section_name + " in " + at +
                               core::did_you_mean(section_name, section_names()));
  }
  locations[key] = at;
}

// validate(), with the source of each key the broken rule names appended to the message.
void validate_with_locations(const Config& config, const Locations& locations,
                             const std::string& source) {
  try {
    config.validate();
  } catch (const ConfigError& error) {
    std::vector<std::string> places;
    for (const auto& key : error.keys()) {
      const auto it = locations.find(key);
      const std::string place = it != locations.end() ? it->second : "default, not set in " + source;
      places.push_back(error.keys().size() == 1 ? place : key + ": " + place);
    }
    throw ConfigError(error.keys(), std::string(error.what()) + " (" + core::join(places, "; ") + ")");
  }
}

}  // namespace

Config parse_config(const std::string& yaml_text, const std::string& source_name,
                    const std::vector<std::string>& overrides) {
  Config config;
  Locations locations;
  read_document(config, parse_document(yaml_text, source_name), source_name, locations);
  for (const auto& text : overrides) apply_override(config, text, locations);
  validate_with_locations(config, locations, source_name);
  return config;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::string text;
  try {
    text = core::read_file(path);
  } catch (const core::Error& error) {
    throw ConfigError("", std::string("cannot read config file: ") + error.what());
  }
  return parse_config(text, path, overrides);
}

std::string to_yaml(const Config& config) {
  std::string out = "# ChunkFlow resolved config: every key, defaults filled in.\n";
  config.visit_sections([&](const char* section_name, const auto& section) {
    std::vector<std::pair<std::string, std::string>> lines;  // "key: value", meaning
    size_t width = 0;
    section.visit_fields([&](const char* name, const auto& field, const char* meaning) {
      lines.emplace_back(std::string(name) + ": " + format_value(field), meaning);
      width = std::max(width, lines.back().first.size());
    });
    out += std::string("\n") + section_name + ":\n";
    for (const auto& [entry, meaning] : lines) {
      out += "  " + entry + std::string(width - entry.size(), ' ') + "  # " + meaning + "\n";
    }
  });
  return out;
}

std::vector<std::string> all_keys() {
  std::vector<std::string> keys;
  Config().visit_sections([&](const char* section_name, const auto& section) {
    section.visit_fields([&](const char* name, const auto&, const char*) {
      keys.push_back(std::string(section_name) + "." + name);
    });
  });
  return keys;
}

void write_resolved_config(const Config& config, const std::string& path) {
  core::write_file_atomic(path, to_yaml(config));
}

}  // namespace chunkflow::configs
