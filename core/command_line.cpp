// Command-line parsing; see command_line.h.
#include "core/command_line.h"

#include <cstdio>

#include "core/error.h"
#include "core/strings.h"

namespace chunkflow::core {

CommandLine::CommandLine(std::string program, std::string summary)
    : program_(std::move(program)), summary_(std::move(summary)) {}

void CommandLine::add(const std::string& name, Kind kind, void* target, const std::string& help,
                      bool required) {
  CF_ASSERT(target != nullptr, name);
  options_.push_back(Option{name, kind, target, help, required});
}

void CommandLine::add_string(const std::string& name, std::string* target, const std::string& help,
                             bool required) {
  add(name, Kind::kString, target, help, required);
}
void CommandLine::add_int(const std::string& name, int64_t* target, const std::string& help,
                          bool required) {
  add(name, Kind::kInt, target, help, required);
}
void CommandLine::add_double(const std::string& name, double* target, const std::string& help) {
  add(name, Kind::kDouble, target, help, false);
}
void CommandLine::add_flag(const std::string& name, bool* target, const std::string& help) {
  add(name, Kind::kFlag, target, help, false);
}
void CommandLine::add_repeated(const std::string& name, std::vector<std::string>* target,
                               const std::string& help) {
  add(name, Kind::kRepeated, target, help, false);
}

void CommandLine::assign(Option& option, const std::string& value) {
  const std::string what = program_ + " --" + option.name;
  switch (option.kind) {
    case Kind::kString: *static_cast<std::string*>(option.target) = value; break;
    case Kind::kInt: *static_cast<int64_t*>(option.target) = parse_int64(value, what); break;
    case Kind::kDouble: *static_cast<double*>(option.target) = parse_double(value, what); break;
    case Kind::kRepeated: static_cast<std::vector<std::string>*>(option.target)->push_back(value); break;
    case Kind::kFlag:
      CF_CHECK(value == "true" || value == "false", what, " takes no value or true/false, got '",
               value, "'");
      *static_cast<bool*>(option.target) = value == "true";
      break;
  }
  option.seen = true;
}

bool CommandLine::parse(const std::vector<std::string>& args) {
  std::vector<std::string> names;
  for (const auto& option : options_) names.push_back("--" + option.name);
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(usage().c_str(), stdout);
      return false;
    }
    CF_CHECK(arg.rfind("--", 0) == 0 && arg.size() > 2, program_, ": unexpected argument '", arg,
             "'; options start with --\n", usage());
    const size_t equals = arg.find('=');
    const std::string name = arg.substr(2, equals == std::string::npos ? std::string::npos : equals - 2);
    Option* option = nullptr;
    for (auto& candidate : options_) {
      if (candidate.name == name) option = &candidate;
    }
    CF_CHECK(option != nullptr, program_, ": unknown option '--", name, "'",
             did_you_mean("--" + name, names), " (see --help)");
    if (equals != std::string::npos) {
      assign(*option, arg.substr(equals + 1));
    } else if (option->kind == Kind::kFlag) {
      assign(*option, "true");
    } else {
      CF_CHECK(i + 1 < args.size(), program_, ": option '--", name, "' needs a value");
      assign(*option, args[++i]);
    }
  }
  for (const auto& option : options_) {
    CF_CHECK(!option.required || option.seen, program_, ": missing required option '--",
             option.name, "' (", option.help, ")");
  }
  return true;
}

std::string CommandLine::usage() const {
  std::string text = "usage: " + program_ + " [options]\n" + summary_ + "\n\noptions:\n";
  for (const auto& option : options_) {
    std::string left = "  --" + option.name;
    switch (option.kind) {
      case Kind::kString: left += " TEXT"; break;
      case Kind::kInt: left += " N"; break;
      case Kind::kDouble: left += " X"; break;
      case Kind::kRepeated: left += " VALUE (repeatable)"; break;
      case Kind::kFlag: break;
    }
    if (left.size() < 30) left.resize(30, ' ');
    text += left + " " + option.help + (option.required ? " [required]" : "") + "\n";
  }
  return text;
}

}  // namespace chunkflow::core
