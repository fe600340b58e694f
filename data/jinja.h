// The Jinja2 that Hugging Face chat templates are written in, rendered as transformers renders
// them (apply_chat_template: an ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks,
// loop controls, the {% generation %} tag, its own tojson filter and the globals raise_exception
// and strftime_now). One template parsed once, rendered from many threads.
//
// Understood (everything a template may use outside this list is refused when it is parsed,
// naming the template line, never rendered differently):
//   statements  if / elif / else, for (tuple targets, `if` filter, else, loop.index / index0 /
//               revindex / revindex0 / first / last / length / previtem / nextitem / cycle),
//               break / continue, set (name, namespace attribute, tuple; block set), macro with
//               defaults, generation; whitespace control (-, +), comments
//   expressions literals (strings with Python escapes, ints, floats, lists, tuples, dicts),
//               attribute / item / slice access, calls with keyword arguments, `a if b else c`,
//               or / and / not, comparisons (chained), in / not in, + - * / // % ** ~, unary -
//   filters     abs attr capitalize count default (d) dictsort first float int items join last
//               length list lower map max min reject rejectattr replace reverse safe select
//               selectattr sort string sum title tojson trim unique upper indent
//   tests       defined undefined none boolean true false integer float number string mapping
//               iterable sequence callable odd even divisibleby eq (equalto, ==) ne (!=) lt (<)
//               le (<=) gt (>) ge (>=) in sameas lower upper
//   globals     range namespace dict raise_exception strftime_now
//   methods     str: strip lstrip rstrip split startswith endswith upper lower title capitalize
//               replace find count join; dict: items keys values get
// Values follow Python: str() of None / booleans / floats / lists / dicts as Python prints them,
// tojson as json.dumps(ensure_ascii=False) with the separators Python uses. Limits: upper, lower,
// title and capitalize refuse non-ASCII text (Python's Unicode case tables are not carried), and
// str() of a list or dict does not escape unassigned or private-use code points as Python's repr
// does (control, format and separator characters are escaped).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace chunkflow::data {

class JinjaTemplate {
 public:
  // Parses `source`; `name` (a file path) names it in errors. Throws core::Error
  // "<name>:<line>: ..." for a syntax error or anything the list above does not cover.
  static JinjaTemplate parse(const std::string& source, const std::string& name);

  struct Rendered {
    std::string text;
    // Byte ranges [begin, end) of `text` that {% generation %} blocks produced, in order.
    std::vector<std::pair<size_t, size_t>> generation_spans;
  };
  // Renders with each key of `variables` (a JSON object; key order kept, as Python dicts keep
  // it) as a template variable. Throws core::Error "<name>:<line>: ..." for an error while
  // rendering (an undefined value used, a type error) and "<name>: the template raised: <message>"
  // for raise_exception.
  Rendered render(const nlohmann::ordered_json& variables) const;

  bool has_generation_blocks() const;
  const std::string& name() const;

 private:
  struct Program;
  std::shared_ptr<const Program> program_;
};

}  // namespace chunkflow::data
