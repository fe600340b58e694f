// Internal to the chat-template engine (data/jinja.h): its values, which follow Python's
// semantics, and the operations, filters, tests, methods and globals the renderer calls
// (jinja_value.cpp: values, printing, comparison and arithmetic; jinja_builtins.cpp: the rest).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace chunkflow::data::jinja_detail {

struct Value;
struct Dict;
struct Callable;
using List = std::vector<Value>;

struct Value {
  enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kCallable };
  Kind kind = Kind::kUndefined;
  bool boolean = false;
  bool tuple = false;  // a list written as a tuple (printed with parentheses)
  int64_t integer = 0;
  double number = 0;
  std::string text;  // kString; kUndefined: what was undefined, for error messages
  std::shared_ptr<List> list;
  std::shared_ptr<Dict> dict;
  std::shared_ptr<const Callable> callable;

  static Value undefined(std::string hint) {
    Value value;
    value.text = std::move(hint);
    return value;
  }
  static Value none() { return of(Kind::kNone); }
  static Value of(Kind kind) {
    Value value;
    value.kind = kind;
    return value;
  }
  static Value of_bool(bool b) {
    Value value = of(Kind::kBool);
    value.boolean = b;
    return value;
  }
  static Value of_int(int64_t i) {
    Value value = of(Kind::kInt);
    value.integer = i;
    return value;
  }
  static Value of_float(double d) {
    Value value = of(Kind::kFloat);
    value.number = d;
    return value;
  }
  static Value of_string(std::string s) {
    Value value = of(Kind::kString);
    value.text = std::move(s);
    return value;
  }
  static Value of_list(List items, bool is_tuple = false) {
    Value value = of(Kind::kList);
    value.list = std::make_shared<List>(std::move(items));
    value.tuple = is_tuple;
    return value;
  }
  static Value of_dict(std::shared_ptr<Dict> d) {
    Value value = of(Kind::kDict);
    value.dict = std::move(d);
    return value;
  }
  bool is_undefined() const { return kind == Kind::kUndefined; }
  bool is_string() const { return kind == Kind::kString; }
  bool is_numeric() const { return kind == Kind::kBool || kind == Kind::kInt || kind == Kind::kFloat; }
  bool is_integral() const { return kind == Kind::kBool || kind == Kind::kInt; }
  int64_t as_int() const { return kind == Kind::kBool ? (boolean ? 1 : 0) : integer; }
  double as_double() const { return kind == Kind::kFloat ? number : static_cast<double>(as_int()); }
};

// Python dicts keep insertion order; templates see few keys, so a vector is the fitting map.
struct Dict {
  enum class Type { kDict, kNamespace, kLoop };
  Type type = Type::kDict;
  std::vector<std::pair<std::string, Value>> entries;

  const Value* find(const std::string& key) const {
    for (const auto& entry : entries) {
      if (entry.first == key) return &entry.second;
    }
    return nullptr;
  }
  void set(const std::string& key, Value value) {
    for (auto& entry : entries) {
      if (entry.first == key) {
        entry.second = std::move(value);
        return;
      }
    }
    entries.emplace_back(key, std::move(value));
  }
};

struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keywords;
};

// A template error: the message, and the template line when it is known where it is thrown.
struct RenderError {
  std::string message;
};

struct Callable {
  std::string name;
  std::function<Value(CallArgs&)> call;
};

// raise_exception(message): ends the render with the template's own message.
struct TemplateRaised {
  std::string message;
};

[[noreturn]] void fail(const std::string& message);
// Using an undefined value where Jinja's Undefined raises.
[[noreturn]] void fail_undefined(const Value& value);
Value make_callable(std::string name, std::function<Value(CallArgs&)> call);
const char* type_name(const Value& value);
bool truthy(const Value& value);

// str(value) as {{ value }} prints it, and repr(value).
std::string python_str(const Value& value);
std::string python_repr(const Value& value);
// json.dumps with these options (transformers' tojson).
struct JsonStyle {
  bool ensure_ascii = false;
  bool sort_keys = false;
  bool indented = false;
  std::string indent;
  std::string item_separator = ", ";
  std::string key_separator = ": ";
};
void json_dump(const Value& value, const JsonStyle& style, int level, std::string& out);
Value from_json(const nlohmann::ordered_json& json);

std::vector<uint32_t> code_points(const std::string& text);
std::string from_code_points(const std::vector<uint32_t>& codes, size_t begin, size_t end);

// Python's ==, <, iteration, len(), `in` and binary arithmetic (+ - * / // % **).
bool equal(const Value& a, const Value& b);
bool less(const Value& a, const Value& b);
List iterate(const Value& value);
int64_t length_of(const Value& value);
bool contains(const Value& container, const Value& item);
Value arithmetic(const std::string& op, const Value& a, const Value& b);

// ---- jinja_builtins.cpp ----
// Python's str.strip / lstrip / rstrip: `chars` None or undefined strips whitespace (str.isspace).
std::string strip(const std::string& text, const Value& chars, bool left, bool right);
// obj.name (attributes, then items) and obj[key] (items, then attributes), as Jinja's getattr and
// getitem; obj[start:stop:step]; a call.
Value get_attribute(const Value& object, const std::string& name);
Value get_item(const Value& object, const Value& key);
Value slice(const Value& object, const Value& start, const Value& stop, const Value& step_value);
Value call(const Value& callee, CallArgs& args);
const Value* keyword(const CallArgs& args, const std::string& name);
// The names a template may use after `|` and `is` (checked when it is parsed).
const std::set<std::string>& filter_names();
const std::set<std::string>& test_names();
Value apply_filter(const std::string& name, const Value& value, const CallArgs& args);
bool apply_test(const std::string& name, const Value& value, const CallArgs& args);
// range, namespace, dict, raise_exception, strftime_now.
const Dict& globals();

}  // namespace chunkflow::data::jinja_detail
