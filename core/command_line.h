// A strict command-line parser for the tools: "--name value" or "--name=value" options, boolean
// flags, repeatable options; unknown options and stray words are errors with a did-you-mean hint.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace chunkflow::core {

class CommandLine {
 public:
  CommandLine(std::string program, std::string summary);

  void add_string(const std::string& name, std::string* target, const std::string& help,
                  bool required = false);
  void add_int(const std::string& name, int64_t* target, const std::string& help,
               bool required = false);
  void add_double(const std::string& name, double* target, const std::string& help);
  void add_flag(const std::string& name, bool* target, const std::string& help);
  // May be given several times; each value is appended.
  void add_repeated(const std::string& name, std::vector<std::string>* target,
                    const std::string& help);

  // Parses args (without the program name). Returns false when --help was asked for (usage has
  // then been printed to stdout). Throws Error for unknown options, missing or malformed values
  // and missing required options.
  bool parse(const std::vector<std::string>& args);

  std::string usage() const;

 private:
  enum class Kind { kString, kInt, kDouble, kFlag, kRepeated };
  struct Option {
    std::string name;
    Kind kind;
    void* target;
    std::string help;
    bool required;
    bool seen = false;
  };
  void add(const std::string& name, Kind kind, void* target, const std::string& help, bool required);
  void assign(Option& option, const std::string& value);

  std::string program_;
  std::string summary_;
  std::vector<Option> options_;
};

}  // namespace chunkflow::core
