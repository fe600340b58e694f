// Jinja2 chat templates as transformers renders them; see jinja.h. Three parts: values with
// Python's semantics, a lexer + parser to a tree, and a tree-walking renderer.
#include "data/jinja.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <ctime>
#include <functional>
#include <limits>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/strings.h"
#include "data/utf8.h"

namespace chunkflow::data {
namespace {

// ============================================================================================
// Values
// ============================================================================================

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
[[noreturn]] void fail(const std::string& message) { throw RenderError{message}; }

struct Callable {
  std::string name;
  std::function<Value(CallArgs&)> call;
};

Value make_callable(std::string name, std::function<Value(CallArgs&)> call) {
  Value value = Value::of(Value::Kind::kCallable);
  value.callable = std::make_shared<const Callable>(Callable{std::move(name), std::move(call)});
  return value;
}

const char* type_name(const Value& value) {
  switch (value.kind) {
    case Value::Kind::kUndefined: return "Undefined";
    case Value::Kind::kNone: return "NoneType";
    case Value::Kind::kBool: return "bool";
    case Value::Kind::kInt: return "int";
    case Value::Kind::kFloat: return "float";
    case Value::Kind::kString: return "str";
    case Value::Kind::kList: return value.tuple ? "tuple" : "list";
    case Value::Kind::kDict: return value.dict->type == Dict::Type::kNamespace ? "Namespace" : "dict";
    case Value::Kind::kCallable: return "function";
  }
  return "?";
}

// Using an undefined value where Jinja's Undefined raises.
[[noreturn]] void fail_undefined(const Value& value) {
  fail(value.text.empty() ? std::string("a value is undefined") : value.text);
}

bool truthy(const Value& value) {
  switch (value.kind) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone: return false;
    case Value::Kind::kBool: return value.boolean;
    case Value::Kind::kInt: return value.integer != 0;
    case Value::Kind::kFloat: return value.number != 0.0;
    case Value::Kind::kString: return !value.text.empty();
    case Value::Kind::kList: return !value.list->empty();
    case Value::Kind::kDict: return value.dict->type != Dict::Type::kDict || !value.dict->entries.empty();
    case Value::Kind::kCallable: return true;
  }
  return false;
}

// ---- Python formatting ---------------------------------------------------------------------

// float.__repr__: the shortest digits that round-trip, fixed notation when the decimal exponent
// is in (-4, 16], else scientific with a signed two-digit exponent.
std::string python_float(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value, std::chars_format::scientific);
  std::string scientific(buffer, result.ptr);
  std::string sign;
  if (scientific[0] == '-') {
    sign = "-";
    scientific.erase(0, 1);
  }
  const size_t e = scientific.find('e');
  std::string digits = scientific.substr(0, e);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  const int exponent = std::stoi(scientific.substr(e + 1));
  const int point = exponent + 1;  // digits before the decimal point
  const int count = static_cast<int>(digits.size());
  if (point > -4 && point <= 16) {
    if (point <= 0) return sign + "0." + std::string(static_cast<size_t>(-point), '0') + digits;
    if (point >= count) return sign + digits + std::string(static_cast<size_t>(point - count), '0') + ".0";
    return sign + digits.substr(0, static_cast<size_t>(point)) + "." + digits.substr(static_cast<size_t>(point));
  }
  std::string out = sign + digits.substr(0, 1);
  if (count > 1) out += "." + digits.substr(1);
  const int shown = point - 1;
  out += shown < 0 ? "e-" : "e+";
  const std::string magnitude = std::to_string(std::abs(shown));
  return out + (magnitude.size() < 2 ? "0" : "") + magnitude;
}

// Code points Python's repr() escapes besides ASCII controls: C1 controls, format characters and
// separators (Cc, Cf, Zl, Zp, Zs other than the space).
bool python_unprintable(uint32_t code) {
  static const std::pair<uint32_t, uint32_t> ranges[] = {
      {0x80, 0xA0},       {0xAD, 0xAD},       {0x600, 0x605},     {0x61C, 0x61C},     {0x6DD, 0x6DD},
      {0x70F, 0x70F},     {0x890, 0x891},     {0x8E2, 0x8E2},     {0x1680, 0x1680},   {0x180E, 0x180E},
      {0x2000, 0x200F},   {0x2028, 0x202F},   {0x205F, 0x2064},   {0x2066, 0x206F},   {0x3000, 0x3000},
      {0xD800, 0xDFFF},   {0xFEFF, 0xFEFF},   {0xFFF9, 0xFFFB},   {0x110BD, 0x110BD}, {0x110CD, 0x110CD},
      {0x13430, 0x1343F}, {0x1BCA0, 0x1BCA3}, {0x1D173, 0x1D17A}, {0xE0001, 0xE0001}, {0xE0020, 0xE007F}};
  for (const auto& range : ranges) {
    if (code >= range.first && code <= range.second) return true;
  }
  return false;
}

std::string hex_escape(const char* prefix, uint32_t code, int width) {
  char buffer[16];
  std::snprintf(buffer, sizeof(buffer), "%0*x", width, code);
  return prefix + std::string(buffer);
}

std::string python_string_repr(const std::string& text) {
  const bool double_quotes = text.find('\'') != std::string::npos && text.find('"') == std::string::npos;
  const char quote = double_quotes ? '"' : '\'';
  std::string out(1, quote);
  const utf8::Decoded decoded = utf8::decode_utf8(text);
  for (const uint32_t code : decoded.codes) {
    if (code == '\\' || code == static_cast<uint32_t>(quote)) {
      out += '\\';
      out += static_cast<char>(code);
    } else if (code == '\n') {
      out += "\\n";
    } else if (code == '\r') {
      out += "\\r";
    } else if (code == '\t') {
      out += "\\t";
    } else if (code < 0x20 || code == 0x7F || (code >= 0x80 && code <= 0xFF && python_unprintable(code))) {
      out += hex_escape("\\x", code, 2);
    } else if (code > 0xFF && python_unprintable(code)) {
      out += code > 0xFFFF ? hex_escape("\\U", code, 8) : hex_escape("\\u", code, 4);
    } else {
      utf8::append_utf8(code, out);
    }
  }
  return out + quote;
}

std::string python_repr(const Value& value);

// str(value), as {{ value }} prints it.
std::string python_str(const Value& value) {
  switch (value.kind) {
    case Value::Kind::kUndefined: return "";
    case Value::Kind::kNone: return "None";
    case Value::Kind::kBool: return value.boolean ? "True" : "False";
    case Value::Kind::kInt: return std::to_string(value.integer);
    case Value::Kind::kFloat: return python_float(value.number);
    case Value::Kind::kString: return value.text;
    case Value::Kind::kCallable: return "<function " + value.callable->name + ">";
    case Value::Kind::kList: {
      std::string out = value.tuple ? "(" : "[";
      for (size_t i = 0; i < value.list->size(); ++i) out += (i ? ", " : "") + python_repr((*value.list)[i]);
      if (value.tuple && value.list->size() == 1) out += ",";
      return out + (value.tuple ? ")" : "]");
    }
    case Value::Kind::kDict: {
      if (value.dict->type == Dict::Type::kNamespace) {
        std::string out = "<Namespace {";
        for (size_t i = 0; i < value.dict->entries.size(); ++i) {
          out += (i ? ", " : "") + python_string_repr(value.dict->entries[i].first) + ": " +
                 python_repr(value.dict->entries[i].second);
        }
        return out + "}>";
      }
      std::string out = "{";
      for (size_t i = 0; i < value.dict->entries.size(); ++i) {
        out += (i ? ", " : "") + python_string_repr(value.dict->entries[i].first) + ": " +
               python_repr(value.dict->entries[i].second);
      }
      return out + "}";
    }
  }
  return "";
}

std::string python_repr(const Value& value) {
  if (value.is_string()) return python_string_repr(value.text);
  if (value.is_undefined()) return "Undefined";
  return python_str(value);
}

// ---- json.dumps ----------------------------------------------------------------------------

struct JsonStyle {
  bool ensure_ascii = false;
  bool sort_keys = false;
  bool indented = false;
  std::string indent;
  std::string item_separator = ", ";
  std::string key_separator = ": ";
};

void json_string(const std::string& text, bool ensure_ascii, std::string& out) {
  out += '"';
  const utf8::Decoded decoded = utf8::decode_utf8(text);
  for (const uint32_t code : decoded.codes) {
    switch (code) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (code < 0x20 || (ensure_ascii && code > 0x7E)) {
          if (code > 0xFFFF) {
            const uint32_t offset = code - 0x10000;
            out += hex_escape("\\u", 0xD800 + (offset >> 10), 4) + hex_escape("\\u", 0xDC00 + (offset & 0x3FF), 4);
          } else {
            out += hex_escape("\\u", code, 4);
          }
        } else {
          utf8::append_utf8(code, out);
        }
    }
  }
  out += '"';
}

void json_dump(const Value& value, const JsonStyle& style, int level, std::string& out) {
  const auto newline = [&](int depth) {
    if (!style.indented) return;
    out += '\n';
    for (int i = 0; i < depth; ++i) out += style.indent;
  };
  switch (value.kind) {
    case Value::Kind::kNone: out += "null"; return;
    case Value::Kind::kBool: out += value.boolean ? "true" : "false"; return;
    case Value::Kind::kInt: out += std::to_string(value.integer); return;
    case Value::Kind::kFloat:
      out += std::isnan(value.number) ? "NaN" : std::isinf(value.number) ? (value.number > 0 ? "Infinity" : "-Infinity")
                                                                          : python_float(value.number);
      return;
    case Value::Kind::kString: json_string(value.text, style.ensure_ascii, out); return;
    case Value::Kind::kList: {
      if (value.list->empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t i = 0; i < value.list->size(); ++i) {
        if (i) out += style.item_separator;
        newline(level + 1);
        json_dump((*value.list)[i], style, level + 1, out);
      }
      newline(level);
      out += ']';
      return;
    }
    case Value::Kind::kDict: {
      if (value.dict->type != Dict::Type::kDict) fail(std::string("Object of type ") + type_name(value) + " is not JSON serializable");
      if (value.dict->entries.empty()) {
        out += "{}";
        return;
      }
      std::vector<const std::pair<std::string, Value>*> entries;
      for (const auto& entry : value.dict->entries) entries.push_back(&entry);
      if (style.sort_keys) {
        std::stable_sort(entries.begin(), entries.end(), [](auto* a, auto* b) { return a->first < b->first; });
      }
      out += '{';
      for (size_t i = 0; i < entries.size(); ++i) {
        if (i) out += style.item_separator;
        newline(level + 1);
        json_string(entries[i]->first, style.ensure_ascii, out);
        out += style.key_separator;
        json_dump(entries[i]->second, style, level + 1, out);
      }
      newline(level);
      out += '}';
      return;
    }
    default: fail(std::string("Object of type ") + type_name(value) + " is not JSON serializable");
  }
}

Value from_json(const nlohmann::ordered_json& json) {
  switch (json.type()) {
    case nlohmann::ordered_json::value_t::null: return Value::none();
    case nlohmann::ordered_json::value_t::boolean: return Value::of_bool(json.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer: return Value::of_int(json.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      const uint64_t unsigned_value = json.get<uint64_t>();
      if (unsigned_value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        fail(core::str_cat("the integer ", unsigned_value, " is beyond the 64-bit range the template engine holds"));
      }
      return Value::of_int(static_cast<int64_t>(unsigned_value));
    }
    case nlohmann::ordered_json::value_t::number_float: return Value::of_float(json.get<double>());
    case nlohmann::ordered_json::value_t::string: return Value::of_string(json.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      List items;
      items.reserve(json.size());
      for (const auto& item : json) items.push_back(from_json(item));
      return Value::of_list(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      auto dict = std::make_shared<Dict>();
      for (const auto& item : json.items()) dict->entries.emplace_back(item.key(), from_json(item.value()));
      return Value::of_dict(std::move(dict));
    }
    default: fail("a JSON value of an unsupported type (binary) reached the template");
  }
}

// ---- Python operations ---------------------------------------------------------------------

std::vector<uint32_t> code_points(const std::string& text) { return utf8::decode_utf8(text).codes; }

std::string from_code_points(const std::vector<uint32_t>& codes, size_t begin, size_t end) {
  std::string out;
  for (size_t i = begin; i < end; ++i) utf8::append_utf8(codes[i], out);
  return out;
}

bool equal(const Value& a, const Value& b) {
  if (a.is_numeric() && b.is_numeric()) {
    if (a.is_integral() && b.is_integral()) return a.as_int() == b.as_int();
    return a.as_double() == b.as_double();
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone: return true;
    case Value::Kind::kString: return a.text == b.text;
    case Value::Kind::kList:
      if (a.tuple != b.tuple || a.list->size() != b.list->size()) return false;
      for (size_t i = 0; i < a.list->size(); ++i) {
        if (!equal((*a.list)[i], (*b.list)[i])) return false;
      }
      return true;
    case Value::Kind::kDict:
      if (a.dict->type != Dict::Type::kDict || b.dict->type != Dict::Type::kDict) return a.dict == b.dict;
      if (a.dict->entries.size() != b.dict->entries.size()) return false;
      for (const auto& entry : a.dict->entries) {
        const Value* other = b.dict->find(entry.first);
        if (other == nullptr || !equal(entry.second, *other)) return false;
      }
      return true;
    case Value::Kind::kCallable: return a.callable == b.callable;
    default: return false;
  }
}

// a < b as Python orders them (numbers, strings by code point, lists lexicographically).
bool less(const Value& a, const Value& b) {
  if (a.is_numeric() && b.is_numeric()) {
    if (a.is_integral() && b.is_integral()) return a.as_int() < b.as_int();
    return a.as_double() < b.as_double();
  }
  if (a.is_string() && b.is_string()) return a.text < b.text;  // UTF-8 byte order = code point order
  if (a.kind == Value::Kind::kList && b.kind == Value::Kind::kList && a.tuple == b.tuple) {
    for (size_t i = 0; i < std::min(a.list->size(), b.list->size()); ++i) {
      if (!equal((*a.list)[i], (*b.list)[i])) return less((*a.list)[i], (*b.list)[i]);
    }
    return a.list->size() < b.list->size();
  }
  if (a.is_undefined()) fail_undefined(a);
  if (b.is_undefined()) fail_undefined(b);
  fail(core::str_cat("'<' not supported between instances of '", type_name(a), "' and '", type_name(b), "'"));
}

// The items a for loop (or list(), join, ...) walks: list items, dict keys, string characters.
List iterate(const Value& value) {
  switch (value.kind) {
    case Value::Kind::kUndefined: return {};
    case Value::Kind::kList: return *value.list;
    case Value::Kind::kDict: {
      if (value.dict->type != Dict::Type::kDict) break;
      List keys;
      for (const auto& entry : value.dict->entries) keys.push_back(Value::of_string(entry.first));
      return keys;
    }
    case Value::Kind::kString: {
      List characters;
      const std::vector<uint32_t> codes = code_points(value.text);
      for (size_t i = 0; i < codes.size(); ++i) characters.push_back(Value::of_string(from_code_points(codes, i, i + 1)));
      return characters;
    }
    default: break;
  }
  fail(core::str_cat("'", type_name(value), "' object is not iterable"));
}

int64_t length_of(const Value& value) {
  switch (value.kind) {
    case Value::Kind::kUndefined: return 0;
    case Value::Kind::kString: return static_cast<int64_t>(code_points(value.text).size());
    case Value::Kind::kList: return static_cast<int64_t>(value.list->size());
    case Value::Kind::kDict: return static_cast<int64_t>(value.dict->entries.size());
    default: fail(core::str_cat("object of type '", type_name(value), "' has no len()"));
  }
}

bool contains(const Value& container, const Value& item) {
  switch (container.kind) {
    case Value::Kind::kUndefined: return false;
    case Value::Kind::kString:
      if (!item.is_string()) {
        fail(core::str_cat("'in <string>' requires string as left operand, not ", type_name(item)));
      }
      return container.text.find(item.text) != std::string::npos;
    case Value::Kind::kList:
      return std::any_of(container.list->begin(), container.list->end(), [&](const Value& v) { return equal(v, item); });
    case Value::Kind::kDict:
      return item.is_string() && container.dict->type == Dict::Type::kDict && container.dict->find(item.text) != nullptr;
    default: fail(core::str_cat("argument of type '", type_name(container), "' is not iterable"));
  }
}

int64_t floor_div(int64_t a, int64_t b) {
  const int64_t quotient = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? quotient - 1 : quotient;
}

Value arithmetic(const std::string& op, const Value& a, const Value& b) {
  if (a.is_undefined()) fail_undefined(a);
  if (b.is_undefined()) fail_undefined(b);
  const auto unsupported = [&]() -> Value {
    fail(core::str_cat("unsupported operand type(s) for ", op, ": '", type_name(a), "' and '", type_name(b), "'"));
  };
  if (op == "+") {
    if (a.is_string() && b.is_string()) return Value::of_string(a.text + b.text);
    if (a.kind == Value::Kind::kList && b.kind == Value::Kind::kList && a.tuple == b.tuple) {
      List items = *a.list;
      items.insert(items.end(), b.list->begin(), b.list->end());
      return Value::of_list(std::move(items), a.tuple);
    }
  }
  if (op == "*" && (a.is_string() || a.kind == Value::Kind::kList || b.is_string() || b.kind == Value::Kind::kList)) {
    const Value& sequence = a.is_integral() ? b : a;
    const Value& times = a.is_integral() ? a : b;
    if (!times.is_integral() || (!sequence.is_string() && sequence.kind != Value::Kind::kList)) return unsupported();
    const int64_t count = std::max<int64_t>(0, times.as_int());
    if (count * std::max<int64_t>(1, length_of(sequence)) > 10'000'000) fail("a repeated sequence would be too long");
    if (sequence.is_string()) {
      std::string out;
      for (int64_t i = 0; i < count; ++i) out += sequence.text;
      return Value::of_string(out);
    }
    List items;
    for (int64_t i = 0; i < count; ++i) items.insert(items.end(), sequence.list->begin(), sequence.list->end());
    return Value::of_list(std::move(items), sequence.tuple);
  }
  if (op == "%" && a.is_string()) fail("printf-style string formatting (str % ...) is not supported");
  if (!a.is_numeric() || !b.is_numeric()) return unsupported();
  const bool integral = a.is_integral() && b.is_integral();
  if (op == "/") {
    if (b.as_double() == 0.0) fail("division by zero");
    return Value::of_float(a.as_double() / b.as_double());
  }
  if (integral) {
    const int64_t x = a.as_int(), y = b.as_int();
    if (op == "+") return Value::of_int(x + y);
    if (op == "-") return Value::of_int(x - y);
    if (op == "*") return Value::of_int(x * y);
    if (op == "//" || op == "%") {
      if (y == 0) fail("integer division or modulo by zero");
      return Value::of_int(op == "//" ? floor_div(x, y) : x - floor_div(x, y) * y);
    }
    if (op == "**") {
      if (y < 0) return Value::of_float(std::pow(static_cast<double>(x), static_cast<double>(y)));
      int64_t result = 1;
      for (int64_t i = 0; i < y; ++i) result *= x;
      return Value::of_int(result);
    }
  }
  const double x = a.as_double(), y = b.as_double();
  if (op == "+") return Value::of_float(x + y);
  if (op == "-") return Value::of_float(x - y);
  if (op == "*") return Value::of_float(x * y);
  if (op == "**") return Value::of_float(std::pow(x, y));
  if (op == "//" || op == "%") {
    if (y == 0.0) fail("float division or modulo by zero");
    const double quotient = std::floor(x / y);
    return Value::of_float(op == "//" ? quotient : x - quotient * y);
  }
  return unsupported();
}

// ---- string methods ------------------------------------------------------------------------

bool ascii_only(const std::string& text) {
  return std::all_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

std::string change_case(const std::string& text, const std::string& how) {
  if (!ascii_only(text)) {
    fail(core::str_cat("str.", how, "() of non-ASCII text is not supported by ChunkFlow's template engine"));
  }
  std::string out = text;
  bool word_start = true;
  for (size_t i = 0; i < out.size(); ++i) {
    const char c = out[i];
    const bool letter = std::isalpha(static_cast<unsigned char>(c)) != 0;
    if (how == "upper") {
      out[i] = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    } else if (how == "lower") {
      out[i] = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    } else if (how == "capitalize") {
      out[i] = static_cast<char>(i == 0 ? std::toupper(static_cast<unsigned char>(c)) : std::tolower(static_cast<unsigned char>(c)));
    } else {  // title: a letter after a non-letter starts a word
      out[i] = static_cast<char>(word_start ? std::toupper(static_cast<unsigned char>(c)) : std::tolower(static_cast<unsigned char>(c)));
      word_start = !letter;
    }
  }
  return out;
}

std::string strip(const std::string& text, const Value& chars, bool left, bool right) {
  const std::vector<uint32_t> codes = code_points(text);
  std::set<uint32_t> strip_set;
  const bool whitespace = chars.is_undefined() || chars.kind == Value::Kind::kNone;
  if (!whitespace) {
    if (!chars.is_string()) fail(core::str_cat("strip arg must be None or str, not ", type_name(chars)));
    for (const uint32_t code : code_points(chars.text)) strip_set.insert(code);
  }
  const auto strippable = [&](uint32_t code) { return whitespace ? utf8::is_python_space(code) : strip_set.count(code) > 0; };
  size_t begin = 0, end = codes.size();
  while (left && begin < end && strippable(codes[begin])) ++begin;
  while (right && end > begin && strippable(codes[end - 1])) --end;
  return from_code_points(codes, begin, end);
}

Value split(const std::string& text, const Value& separator, int64_t max_split) {
  List parts;
  if (separator.is_undefined() || separator.kind == Value::Kind::kNone) {
    const std::vector<uint32_t> codes = code_points(text);
    size_t at = 0;
    while (true) {
      while (at < codes.size() && utf8::is_python_space(codes[at])) ++at;
      if (at == codes.size()) break;
      if (max_split >= 0 && static_cast<int64_t>(parts.size()) == max_split) {
        size_t end = codes.size();
        while (end > at && utf8::is_python_space(codes[end - 1])) --end;
        parts.push_back(Value::of_string(from_code_points(codes, at, end)));
        break;
      }
      size_t end = at;
      while (end < codes.size() && !utf8::is_python_space(codes[end])) ++end;
      parts.push_back(Value::of_string(from_code_points(codes, at, end)));
      at = end;
    }
    return Value::of_list(std::move(parts));
  }
  if (!separator.is_string()) fail(core::str_cat("must be str or None, not ", type_name(separator)));
  if (separator.text.empty()) fail("empty separator");
  size_t at = 0;
  while (true) {
    const size_t found = text.find(separator.text, at);
    if (found == std::string::npos || (max_split >= 0 && static_cast<int64_t>(parts.size()) == max_split)) {
      parts.push_back(Value::of_string(text.substr(at)));
      break;
    }
    parts.push_back(Value::of_string(text.substr(at, found - at)));
    at = found + separator.text.size();
  }
  return Value::of_list(std::move(parts));
}

std::string replace(const std::string& text, const std::string& old_text, const std::string& new_text, int64_t count) {
  std::string out;
  if (old_text.empty()) {  // Python inserts the new text around every character
    const std::vector<uint32_t> codes = code_points(text);
    int64_t done = 0;
    for (size_t i = 0; i <= codes.size(); ++i) {
      if (count < 0 || done < count) {
        out += new_text;
        ++done;
      }
      if (i < codes.size()) utf8::append_utf8(codes[i], out);
    }
    return out;
  }
  size_t at = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    const size_t found = text.find(old_text, at);
    if (found == std::string::npos) break;
    out += text.substr(at, found - at) + new_text;
    at = found + old_text.size();
    ++done;
  }
  return out + text.substr(at);
}

bool matches_affix(const std::string& text, const Value& affix, bool prefix, const char* method) {
  const auto one = [&](const Value& candidate) {
    if (!candidate.is_string()) fail(core::str_cat(method, " first arg must be str or a tuple of str, not ", type_name(candidate)));
    const std::string& s = candidate.text;
    return s.size() <= text.size() && (prefix ? text.compare(0, s.size(), s) == 0 : text.compare(text.size() - s.size(), s.size(), s) == 0);
  };
  if (affix.kind == Value::Kind::kList && affix.tuple) return std::any_of(affix.list->begin(), affix.list->end(), one);
  return one(affix);
}


// ============================================================================================
// Lexer: the template source as Jinja's lexer cuts it with trim_blocks and lstrip_blocks.
// ============================================================================================

enum class TokenType { kText, kVariableBegin, kVariableEnd, kBlockBegin, kBlockEnd, kName, kString, kInteger, kFloat,
                       kOperator, kEnd };

struct Token {
  TokenType type = TokenType::kEnd;
  std::string value;
  int line = 1;
};

struct SyntaxError {
  std::string message;
  int line = 1;
};

size_t space_bytes_at(const std::string& text, size_t at) {
  size_t end = at;
  while (end < text.size()) {
    const size_t length = utf8::well_formed_length(text, end);
    if (length == 0) break;
    const utf8::Decoded one = utf8::decode_utf8(std::string_view(text).substr(end, length));
    if (!utf8::is_python_space(one.codes[0])) break;
    end += length;
  }
  return end - at;
}

std::string rstrip_space(const std::string& text) {
  const utf8::Decoded decoded = utf8::decode_utf8(text);
  size_t end = decoded.codes.size();
  while (end > 0 && utf8::is_python_space(decoded.codes[end - 1])) --end;
  return text.substr(0, decoded.offsets[end]);
}

// Python's "unicode-escape" decoding of a string literal's body.
std::string unescape(const std::string& body, int line) {
  std::string out;
  for (size_t i = 0; i < body.size(); ++i) {
    if (body[i] != '\\' || i + 1 == body.size()) {
      out += body[i];
      continue;
    }
    const char c = body[++i];
    const auto hex = [&](size_t digits) {
      uint32_t code = 0;
      for (size_t k = 1; k <= digits; ++k) {
        const char h = i + k < body.size() ? body[i + k] : 'g';
        if (!std::isxdigit(static_cast<unsigned char>(h))) throw SyntaxError{"truncated \\x/\\u escape in a string", line};
        code = code * 16 + static_cast<uint32_t>(std::isdigit(static_cast<unsigned char>(h)) ? h - '0' : (std::tolower(h) - 'a' + 10));
      }
      i += digits;
      if (code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) throw SyntaxError{"a string escape names a surrogate or an invalid code point", line};
      utf8::append_utf8(code, out);
    };
    switch (c) {
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case 'a': out += '\a'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case 'v': out += '\v'; break;
      case '\n': break;  // line continuation
      case 'x': hex(2); break;
      case 'u': hex(4); break;
      case 'U': hex(8); break;
      case 'N': throw SyntaxError{"\\N{...} escapes are not supported", line};
      default:
        if (c >= '0' && c <= '7') {
          uint32_t code = static_cast<uint32_t>(c - '0');
          for (int k = 0; k < 2 && i + 1 < body.size() && body[i + 1] >= '0' && body[i + 1] <= '7'; ++k) {
            code = code * 8 + static_cast<uint32_t>(body[++i] - '0');
          }
          utf8::append_utf8(code, out);
        } else {  // unknown escapes stay as written
          out += '\\';
          out += c;
        }
    }
  }
  return out;
}

class Lexer {
 public:
  explicit Lexer(std::string source) : source_(std::move(source)) {}

  std::vector<Token> run() {
    normalize_newlines();
    size_t pos = 0;
    bool line_starting = true;
    while (pos < source_.size()) {
      const size_t open = next_opener(pos);
      if (open == std::string::npos) {
        emit_text(source_.substr(pos), pos);
        break;
      }
      const char kind = source_[open + 1];
      const char sign = open + 2 < source_.size() && (source_[open + 2] == '-' || source_[open + 2] == '+') ? source_[open + 2] : 0;
      std::string text = source_.substr(pos, open - pos);
      if (sign == '-') {
        text = rstrip_space(text);
      } else if (sign != '+' && kind != '{') {  // lstrip_blocks: a block or comment alone on its line
        const size_t newline = text.rfind('\n');
        const size_t line_begin = newline == std::string::npos ? 0 : newline + 1;
        if ((line_begin > 0 || line_starting) && text.find_first_not_of(" \t", line_begin) == std::string::npos) {
          text.resize(line_begin);
        }
      }
      emit_text(text, pos);
      pos = open + 2 + (sign ? 1 : 0);
      line_ = line_at(pos);
      if (kind == '#') {
        line_starting = skip_comment(pos);
      } else {
        line_starting = lex_tag(kind == '{' ? TokenType::kVariableBegin : TokenType::kBlockBegin, pos);
      }
    }
    tokens_.push_back({TokenType::kEnd, "", line_at(source_.size())});
    return std::move(tokens_);
  }

 private:
  void normalize_newlines() {
    std::string out;
    out.reserve(source_.size());
    for (size_t i = 0; i < source_.size(); ++i) {
      if (source_[i] == '\r') {
        out += '\n';
        if (i + 1 < source_.size() && source_[i + 1] == '\n') ++i;
      } else {
        out += source_[i];
      }
    }
    if (!out.empty() && out.back() == '\n') out.pop_back();  // keep_trailing_newline = False
    source_ = std::move(out);
  }

  int line_at(size_t pos) {
    while (counted_ < pos && counted_ < source_.size()) {
      if (source_[counted_] == '\n') ++counted_line_;
      ++counted_;
    }
    return counted_line_;
  }

  size_t next_opener(size_t pos) const {
    size_t at = source_.find('{', pos);
    while (at != std::string::npos && at + 1 < source_.size()) {
      const char next = source_[at + 1];
      if (next == '{' || next == '%' || next == '#') return at;
      at = source_.find('{', at + 1);
    }
    return std::string::npos;
  }

  void emit_text(const std::string& text, size_t pos) {
    if (!text.empty()) tokens_.push_back({TokenType::kText, text, line_at(pos)});
  }

  // After the end of a tag: the whitespace control it asks for. Returns whether what it consumed
  // ends with a newline (Jinja's line_starting).
  bool after_end(size_t& pos, size_t end_length, char sign, bool trims) {
    pos += end_length;
    if (sign == '-') {
      pos += space_bytes_at(source_, pos);
    } else if (sign == 0 && trims && pos < source_.size() && source_[pos] == '\n') {
      ++pos;
    }
    return pos > 0 && source_[pos - 1] == '\n';
  }

  bool skip_comment(size_t& pos) {
    const size_t end = source_.find("#}", pos);
    if (end == std::string::npos) throw SyntaxError{"missing end of comment tag", line_};
    const char sign = end > pos && (source_[end - 1] == '-' || source_[end - 1] == '+') ? source_[end - 1] : 0;
    pos = end;
    return after_end(pos, 2, sign, true);
  }

  bool lex_tag(TokenType begin, size_t& pos) {
    const bool block = begin == TokenType::kBlockBegin;
    const std::string end_text = block ? "%}" : "}}";
    tokens_.push_back({begin, "", line_});
    std::vector<char> balance;
    while (true) {
      const size_t spaces = space_bytes_at(source_, pos);
      pos += spaces;
      if (pos >= source_.size()) throw SyntaxError{block ? "unexpected end of template, expected '%}'" : "unexpected end of template, expected '}}'", line_};
      const int line = line_at(pos);
      if (balance.empty()) {
        char sign = 0;
        if ((source_[pos] == '-' || (block && source_[pos] == '+')) && source_.compare(pos + 1, 2, end_text) == 0) sign = source_[pos];
        if (sign != 0 || source_.compare(pos, 2, end_text) == 0) {
          tokens_.push_back({block ? TokenType::kBlockEnd : TokenType::kVariableEnd, "", line});
          return after_end(pos, sign ? 3 : 2, sign, block);
        }
      }
      tokens_.push_back(lex_token(pos, line, balance));
    }
  }

  Token lex_token(size_t& pos, int line, std::vector<char>& balance) {
    const char c = source_[pos];
    if (std::isdigit(static_cast<unsigned char>(c))) return lex_number(pos, line);
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      const size_t begin = pos;
      while (pos < source_.size() && (std::isalnum(static_cast<unsigned char>(source_[pos])) || source_[pos] == '_')) ++pos;
      return {TokenType::kName, source_.substr(begin, pos - begin), line};
    }
    if (c == '\'' || c == '"') {
      size_t at = pos + 1;
      while (at < source_.size() && source_[at] != c) at += source_[at] == '\\' ? 2 : 1;
      if (at >= source_.size()) throw SyntaxError{"unterminated string", line};
      const std::string body = source_.substr(pos + 1, at - pos - 1);
      pos = at + 1;
      return {TokenType::kString, unescape(body, line), line};
    }
    static const char* operators[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[", "]", "(",
                                      ")", "{", "}", ">", "<", "=", ".", ":", "|", ",", ";"};
    for (const char* op : operators) {
      const size_t length = std::char_traits<char>::length(op);
      if (source_.compare(pos, length, op) != 0) continue;
      pos += length;
      const std::string text(op);
      if (text == "(" || text == "[" || text == "{") balance.push_back(text[0]);
      if (text == ")" || text == "]" || text == "}") {
        const char expected = text == ")" ? '(' : text == "]" ? '[' : '{';
        if (balance.empty() || balance.back() != expected) throw SyntaxError{"unexpected '" + text + "'", line};
        balance.pop_back();
      }
      return {TokenType::kOperator, text, line};
    }
    throw SyntaxError{core::str_cat("unexpected character '", std::string(1, c), "'"), line};
  }

  Token lex_number(size_t& pos, int line) {
    const auto digits = [&](size_t at) {
      size_t end = at;
      while (end < source_.size() && (std::isdigit(static_cast<unsigned char>(source_[end])) ||
                                      (source_[end] == '_' && end + 1 < source_.size() &&
                                       std::isdigit(static_cast<unsigned char>(source_[end + 1])) && end > at))) {
        ++end;
      }
      return end;
    };
    const size_t begin = pos;
    size_t end = digits(pos);
    bool is_float = false;
    if (end + 1 < source_.size() && source_[end] == '.' && std::isdigit(static_cast<unsigned char>(source_[end + 1]))) {
      end = digits(end + 1);
      is_float = true;
    }
    if (end < source_.size() && (source_[end] == 'e' || source_[end] == 'E')) {
      size_t at = end + 1;
      if (at < source_.size() && (source_[at] == '+' || source_[at] == '-')) ++at;
      if (at < source_.size() && std::isdigit(static_cast<unsigned char>(source_[at]))) {
        end = digits(at);
        is_float = true;
      }
    }
    std::string text = source_.substr(begin, end - begin);
    text.erase(std::remove(text.begin(), text.end(), '_'), text.end());
    pos = end;
    return {is_float ? TokenType::kFloat : TokenType::kInteger, text, line};
  }

  std::string source_;
  std::vector<Token> tokens_;
  int line_ = 1;
  size_t counted_ = 0;
  int counted_line_ = 1;
};

// ============================================================================================
// Render state and the calls the tree makes (attributes, items, methods, filters, tests)
// ============================================================================================

// A scope: the template's top level, a for loop, a macro call. Lookups walk outwards; `set`
// writes to the innermost, so a loop's assignments do not leak out (Jinja's scoping).
struct Frame {
  Dict variables;
  Frame* parent = nullptr;

  const Value* find(const std::string& name) const {
    for (const Frame* frame = this; frame != nullptr; frame = frame->parent) {
      if (const Value* found = frame->variables.find(name)) return found;
    }
    return nullptr;
  }
  void set(const std::string& name, Value value) { variables.set(name, std::move(value)); }
};

enum class Flow { kNormal, kBreak, kContinue };

struct TemplateRaised {
  std::string message;
};

struct Context {
  const Dict* variables = nullptr;  // what render() was given
  Frame* root = nullptr;
  Frame* frame = nullptr;
  std::string* out = nullptr;
  bool capturing = false;  // output goes to a macro's or a block set's string
  std::vector<std::pair<size_t, size_t>>* spans = nullptr;
  Flow flow = Flow::kNormal;
  int macro_depth = 0;
};

const Value* keyword(const CallArgs& args, const std::string& name) {
  for (const auto& entry : args.keywords) {
    if (entry.first == name) return &entry.second;
  }
  return nullptr;
}

// The argument at `position` or named `name`, else `fallback`.
Value argument(const CallArgs& args, size_t position, const std::string& name, Value fallback = Value::undefined("")) {
  if (const Value* named = keyword(args, name)) return *named;
  return position < args.positional.size() ? args.positional[position] : fallback;
}

void check_arguments(const CallArgs& args, size_t max_positional, const std::vector<std::string>& names, const std::string& what) {
  if (args.positional.size() > max_positional) {
    fail(core::str_cat(what, " takes at most ", max_positional, " positional arguments (", args.positional.size(), " given)"));
  }
  for (const auto& entry : args.keywords) {
    if (std::find(names.begin(), names.end(), entry.first) == names.end()) {
      fail(core::str_cat(what, " got an unexpected keyword argument '", entry.first, "'"));
    }
  }
}

int64_t int_argument(const Value& value, const std::string& what) {
  if (!value.is_integral()) fail(core::str_cat(what, " must be an integer, not ", type_name(value)));
  return value.as_int();
}

std::string string_argument(const Value& value, const std::string& what) {
  if (!value.is_string()) fail(core::str_cat(what, " must be a string, not ", type_name(value)));
  return value.text;
}

Value string_method(const std::string& receiver, const std::string& name, CallArgs& args) {
  const std::string what = "str." + name + "()";
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    check_arguments(args, 1, {}, what);
    return Value::of_string(strip(receiver, argument(args, 0, ""), name != "rstrip", name != "lstrip"));
  }
  if (name == "split") {
    check_arguments(args, 2, {"sep", "maxsplit"}, what);
    return split(receiver, argument(args, 0, "sep"), int_argument(argument(args, 1, "maxsplit", Value::of_int(-1)), "maxsplit"));
  }
  if (name == "startswith" || name == "endswith") {
    check_arguments(args, 1, {}, what);
    return Value::of_bool(matches_affix(receiver, argument(args, 0, ""), name == "startswith", name.c_str()));
  }
  if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
    check_arguments(args, 0, {}, what);
    return Value::of_string(change_case(receiver, name));
  }
  if (name == "replace") {
    check_arguments(args, 3, {"count"}, what);
    return Value::of_string(replace(receiver, string_argument(argument(args, 0, ""), "old"), string_argument(argument(args, 1, ""), "new"),
                                    int_argument(argument(args, 2, "count", Value::of_int(-1)), "count")));
  }
  if (name == "find" || name == "count") {
    check_arguments(args, 1, {}, what);
    const std::string needle = string_argument(argument(args, 0, ""), "the substring");
    if (name == "find") {
      const size_t found = receiver.find(needle);
      return Value::of_int(found == std::string::npos ? -1 : static_cast<int64_t>(code_points(receiver.substr(0, found)).size()));
    }
    if (needle.empty()) return Value::of_int(static_cast<int64_t>(code_points(receiver).size()) + 1);
    int64_t count = 0;
    for (size_t at = receiver.find(needle); at != std::string::npos; at = receiver.find(needle, at + needle.size())) ++count;
    return Value::of_int(count);
  }
  if (name == "join") {
    check_arguments(args, 1, {}, what);
    std::string out;
    const List items = iterate(argument(args, 0, ""));
    for (size_t i = 0; i < items.size(); ++i) {
      if (!items[i].is_string()) fail(core::str_cat("sequence item ", i, ": expected str instance, ", type_name(items[i]), " found"));
      out += (i ? receiver : "") + items[i].text;
    }
    return Value::of_string(out);
  }
  fail(core::str_cat("'str object' has no attribute '", name, "'"));
}

Value dict_method(const std::shared_ptr<Dict>& receiver, const std::string& name, CallArgs& args) {
  const std::string what = "dict." + name + "()";
  if (name == "get") {
    check_arguments(args, 2, {}, what);
    const Value key = argument(args, 0, "");
    const Value* found = key.is_string() ? receiver->find(key.text) : nullptr;
    return found != nullptr ? *found : argument(args, 1, "", Value::none());
  }
  check_arguments(args, 0, {}, what);
  List items;
  for (const auto& entry : receiver->entries) {
    if (name == "items") items.push_back(Value::of_list({Value::of_string(entry.first), entry.second}, true));
    if (name == "keys") items.push_back(Value::of_string(entry.first));
    if (name == "values") items.push_back(entry.second);
  }
  return Value::of_list(std::move(items));
}

bool is_string_method(const std::string& name) {
  static const std::set<std::string> names = {"strip", "lstrip", "rstrip", "split", "startswith", "endswith", "upper",
                                              "lower", "title", "capitalize", "replace", "find", "count", "join"};
  return names.count(name) > 0;
}
bool is_dict_method(const std::string& name) { return name == "items" || name == "keys" || name == "values" || name == "get"; }

Value bound_method(const Value& receiver, const std::string& name) {
  if (receiver.is_string()) {
    const std::string text = receiver.text;
    return make_callable("str." + name, [text, name](CallArgs& args) { return string_method(text, name, args); });
  }
  const std::shared_ptr<Dict> dict = receiver.dict;
  return make_callable("dict." + name, [dict, name](CallArgs& args) { return dict_method(dict, name, args); });
}

// obj.name: Python attributes first (methods), then items, as Jinja's getattr does.
Value get_attribute(const Value& object, const std::string& name) {
  switch (object.kind) {
    case Value::Kind::kUndefined: fail_undefined(object);
    case Value::Kind::kDict: {
      if (object.dict->type == Dict::Type::kDict && is_dict_method(name)) return bound_method(object, name);
      if (const Value* found = object.dict->find(name)) return *found;
      return Value::undefined(core::str_cat("'", type_name(object), " object' has no attribute '", name, "'"));
    }
    case Value::Kind::kString:
      if (is_string_method(name)) return bound_method(object, name);
      break;
    default: break;
  }
  return Value::undefined(core::str_cat("'", type_name(object), " object' has no attribute '", name, "'"));
}

// obj[key]: items first, then attributes, as Jinja's getitem does.
Value get_item(const Value& object, const Value& key) {
  if (object.is_undefined()) fail_undefined(object);
  if (object.kind == Value::Kind::kDict && key.is_string()) {
    if (const Value* found = object.dict->find(key.text)) return *found;
    return get_attribute(object, key.text);
  }
  if ((object.kind == Value::Kind::kList || object.is_string()) && key.is_integral()) {
    const int64_t size = length_of(object);
    int64_t index = key.as_int();
    if (index < 0) index += size;
    if (index < 0 || index >= size) {
      return Value::undefined(core::str_cat("'", type_name(object), " object' has no element ", key.as_int()));
    }
    if (object.kind == Value::Kind::kList) return (*object.list)[static_cast<size_t>(index)];
    const std::vector<uint32_t> codes = code_points(object.text);
    return Value::of_string(from_code_points(codes, static_cast<size_t>(index), static_cast<size_t>(index) + 1));
  }
  if (key.is_string()) return get_attribute(object, key.text);
  return Value::undefined(core::str_cat("'", type_name(object), " object' has no element ", python_repr(key)));
}

// Python's slice semantics (start, stop, step each optional; negative counts from the end).
Value slice(const Value& object, const Value& start, const Value& stop, const Value& step_value) {
  if (object.is_undefined()) fail_undefined(object);
  if (object.kind != Value::Kind::kList && !object.is_string()) fail(core::str_cat("'", type_name(object), "' object is not subscriptable"));
  const auto given = [](const Value& v) { return !v.is_undefined() && v.kind != Value::Kind::kNone; };
  const int64_t size = length_of(object);
  const int64_t step = given(step_value) ? int_argument(step_value, "a slice step") : 1;
  if (step == 0) fail("slice step cannot be zero");
  const auto bound = [&](const Value& v, int64_t fallback) {
    if (!given(v)) return fallback;
    int64_t index = int_argument(v, "a slice index");
    if (index < 0) index += size;
    return step > 0 ? std::clamp<int64_t>(index, 0, size) : std::clamp<int64_t>(index, -1, size - 1);
  };
  const int64_t first = bound(start, step > 0 ? 0 : size - 1);
  const int64_t last = bound(stop, step > 0 ? size : -1);
  std::vector<int64_t> indices;
  for (int64_t i = first; step > 0 ? i < last : i > last; i += step) indices.push_back(i);
  if (object.kind == Value::Kind::kList) {
    List items;
    for (const int64_t i : indices) items.push_back((*object.list)[static_cast<size_t>(i)]);
    return Value::of_list(std::move(items), object.tuple);
  }
  const std::vector<uint32_t> codes = code_points(object.text);
  std::string out;
  for (const int64_t i : indices) utf8::append_utf8(codes[static_cast<size_t>(i)], out);
  return Value::of_string(out);
}

Value call(const Value& callee, CallArgs& args) {
  if (callee.is_undefined()) fail_undefined(callee);
  if (callee.kind != Value::Kind::kCallable) fail(core::str_cat("'", type_name(callee), "' object is not callable"));
  return callee.callable->call(args);
}

// ---- tests ---------------------------------------------------------------------------------

const std::set<std::string>& test_names() {
  static const std::set<std::string> names = {
      "defined", "undefined", "none", "boolean", "true", "false", "integer", "float", "number", "string", "mapping",
      "iterable", "sequence", "callable", "odd", "even", "divisibleby", "eq", "equalto", "==", "ne", "!=", "lt", "<",
      "lessthan", "le", "<=", "gt", ">", "greaterthan", "ge", ">=", "in", "sameas", "lower", "upper"};
  return names;
}

bool apply_test(const std::string& name, const Value& value, const CallArgs& args) {
  const Value other = argument(args, 0, "");
  if (name == "defined") return !value.is_undefined();
  if (name == "undefined") return value.is_undefined();
  if (name == "none") return value.kind == Value::Kind::kNone;
  if (name == "boolean") return value.kind == Value::Kind::kBool;
  if (name == "true") return value.kind == Value::Kind::kBool && value.boolean;
  if (name == "false") return value.kind == Value::Kind::kBool && !value.boolean;
  if (name == "integer") return value.kind == Value::Kind::kInt;
  if (name == "float") return value.kind == Value::Kind::kFloat;
  if (name == "number") return value.is_numeric();
  if (name == "string") return value.is_string();
  if (name == "mapping") return value.kind == Value::Kind::kDict && value.dict->type == Dict::Type::kDict;
  if (name == "iterable") {
    return value.is_undefined() || value.is_string() || value.kind == Value::Kind::kList ||
           (value.kind == Value::Kind::kDict && value.dict->type == Dict::Type::kDict);
  }
  if (name == "sequence") {
    return value.is_undefined() || value.is_string() || value.kind == Value::Kind::kList || value.kind == Value::Kind::kDict;
  }
  if (name == "callable") return value.kind == Value::Kind::kCallable;
  if (name == "odd" || name == "even") {
    const int64_t number = int_argument(value, "the value of 'is " + name + "'");
    return (((number % 2) + 2) % 2 == 1) == (name == "odd");
  }
  if (name == "divisibleby") {
    const int64_t divisor = int_argument(other, "divisibleby's argument");
    if (divisor == 0) fail("integer division or modulo by zero");
    return int_argument(value, "the value of 'is divisibleby'") % divisor == 0;
  }
  if (name == "eq" || name == "equalto" || name == "==") return equal(value, other);
  if (name == "ne" || name == "!=") return !equal(value, other);
  if (name == "lt" || name == "<" || name == "lessthan") return less(value, other);
  if (name == "le" || name == "<=") return !less(other, value);
  if (name == "gt" || name == ">" || name == "greaterthan") return less(other, value);
  if (name == "ge" || name == ">=") return !less(value, other);
  if (name == "in") return contains(other, value);
  if (name == "sameas") {
    if (value.kind != other.kind) return false;
    switch (value.kind) {
      case Value::Kind::kNone:
      case Value::Kind::kUndefined: return true;
      case Value::Kind::kBool: return value.boolean == other.boolean;
      case Value::Kind::kList: return value.list == other.list;
      case Value::Kind::kDict: return value.dict == other.dict;
      case Value::Kind::kCallable: return value.callable == other.callable;
      default: fail(core::str_cat("'is sameas' of ", type_name(value), " values (object identity) is not supported"));
    }
  }
  if (name == "lower" || name == "upper") {
    if (!value.is_string()) return false;
    if (!ascii_only(value.text)) fail("'is " + name + "' of non-ASCII text is not supported by ChunkFlow's template engine");
    const std::string changed = change_case(value.text, name);
    const bool has_cased = std::any_of(value.text.begin(), value.text.end(), [](char c) { return std::isalpha(static_cast<unsigned char>(c)); });
    return has_cased && changed == value.text;
  }
  fail("unknown test '" + name + "'");
}

// ---- filters -------------------------------------------------------------------------------

const std::set<std::string>& filter_names() {
  static const std::set<std::string> names = {
      "abs", "attr", "capitalize", "count", "d", "default", "dictsort", "first", "float", "indent", "int", "items",
      "join", "last", "length", "list", "lower", "map", "max", "min", "reject", "rejectattr", "replace", "reverse", "safe",
      "select", "selectattr", "sort", "string", "sum", "title", "tojson", "trim", "unique", "upper"};
  return names;
}

Value apply_filter(const std::string& name, const Value& value, const CallArgs& args);

// attribute="a.b" or an integer index path, as Jinja's make_attrgetter follows it.
Value follow_attribute(const Value& item, const Value& attribute) {
  if (attribute.is_integral()) return get_item(item, attribute);
  Value current = item;
  std::vector<std::string> parts(1);
  for (const char c : string_argument(attribute, "attribute")) {
    if (c == '.') {
      parts.emplace_back();
    } else {
      parts.back() += c;
    }
  }
  for (const std::string& part : parts) {
    const bool index = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
    current = get_item(current, index ? Value::of_int(std::stoll(part)) : Value::of_string(part));
  }
  return current;
}

// Sorting and unique compare strings case-insensitively unless case_sensitive (Jinja's default).
Value sort_key(const Value& value, bool case_sensitive) {
  if (!case_sensitive && value.is_string()) {
    if (!ascii_only(value.text)) fail("case-insensitive sorting of non-ASCII text is not supported by ChunkFlow's template engine");
    return Value::of_string(change_case(value.text, "lower"));
  }
  return value;
}

Value tojson_filter(const Value& value, const CallArgs& args) {
  check_arguments(args, 4, {"ensure_ascii", "indent", "separators", "sort_keys"}, "tojson");
  JsonStyle style;
  style.ensure_ascii = truthy(argument(args, 0, "ensure_ascii", Value::of_bool(false)));
  const Value indent = argument(args, 1, "indent", Value::none());
  const Value separators = argument(args, 2, "separators", Value::none());
  style.sort_keys = truthy(argument(args, 3, "sort_keys", Value::of_bool(false)));
  if (indent.kind != Value::Kind::kNone && !indent.is_undefined()) {
    style.indented = true;
    style.indent = indent.is_string() ? indent.text : std::string(static_cast<size_t>(std::max<int64_t>(0, int_argument(indent, "indent"))), ' ');
    style.item_separator = ",";
  }
  if (separators.kind == Value::Kind::kList) {
    if (separators.list->size() != 2) fail("tojson separators must be an (item_separator, key_separator) pair");
    style.item_separator = string_argument((*separators.list)[0], "the item separator");
    style.key_separator = string_argument((*separators.list)[1], "the key separator");
  }
  std::string out;
  json_dump(value, style, 0, out);
  return Value::of_string(out);
}

Value select_filter(const std::string& name, const Value& value, const CallArgs& args) {
  const bool by_attribute = name == "selectattr" || name == "rejectattr";
  const bool keep_matches = name == "select" || name == "selectattr";
  const size_t test_at = by_attribute ? 1 : 0;
  const Value attribute = by_attribute ? argument(args, 0, "") : Value::undefined("");
  const Value test = args.positional.size() > test_at ? args.positional[test_at] : Value::undefined("");
  CallArgs test_args;
  for (size_t i = test_at + 1; i < args.positional.size(); ++i) test_args.positional.push_back(args.positional[i]);
  List kept;
  for (const Value& item : iterate(value)) {
    const Value subject = by_attribute ? follow_attribute(item, attribute) : item;
    const bool match = test.is_undefined() ? truthy(subject) : apply_test(string_argument(test, name + "'s test"), subject, test_args);
    if (match == keep_matches) kept.push_back(item);
  }
  return Value::of_list(std::move(kept));
}

Value map_filter(const Value& value, const CallArgs& args) {
  List mapped;
  if (const Value* attribute = keyword(args, "attribute")) {
    const Value* fallback = keyword(args, "default");
    for (const Value& item : iterate(value)) {
      Value field = follow_attribute(item, *attribute);
      mapped.push_back(field.is_undefined() && fallback != nullptr ? *fallback : field);
    }
    return Value::of_list(std::move(mapped));
  }
  if (args.positional.empty()) fail("map needs a filter name or attribute=");
  const std::string filter = string_argument(args.positional[0], "map's filter");
  if (!filter_names().count(filter)) fail("map: the filter '" + filter + "' is not supported");
  CallArgs rest;
  rest.positional.assign(args.positional.begin() + 1, args.positional.end());
  rest.keywords = args.keywords;
  for (const Value& item : iterate(value)) mapped.push_back(apply_filter(filter, item, rest));
  return Value::of_list(std::move(mapped));
}

Value sort_filter(const Value& value, const CallArgs& args) {
  check_arguments(args, 3, {"reverse", "case_sensitive", "attribute"}, "sort");
  const bool reverse = truthy(argument(args, 0, "reverse"));
  const bool case_sensitive = truthy(argument(args, 1, "case_sensitive"));
  const Value attribute = argument(args, 2, "attribute", Value::none());
  List items = iterate(value);
  const auto key = [&](const Value& item) {
    return sort_key(attribute.kind == Value::Kind::kNone ? item : follow_attribute(item, attribute), case_sensitive);
  };
  std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) { return reverse ? less(key(b), key(a)) : less(key(a), key(b)); });
  return Value::of_list(std::move(items));
}

Value extreme_filter(const std::string& name, const Value& value, const CallArgs& args) {
  check_arguments(args, 2, {"case_sensitive", "attribute"}, name);
  const bool case_sensitive = truthy(argument(args, 0, "case_sensitive"));
  const Value attribute = argument(args, 1, "attribute", Value::none());
  const List items = iterate(value);
  if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
  const auto key = [&](const Value& item) {
    return sort_key(attribute.kind == Value::Kind::kNone ? item : follow_attribute(item, attribute), case_sensitive);
  };
  size_t best = 0;
  for (size_t i = 1; i < items.size(); ++i) {
    if (name == "min" ? less(key(items[i]), key(items[best])) : less(key(items[best]), key(items[i]))) best = i;
  }
  return items[best];
}

Value number_filter(const std::string& name, const Value& value, const CallArgs& args) {
  if (name == "float") {
    const Value fallback = argument(args, 0, "default", Value::of_float(0.0));
    if (value.is_numeric()) return Value::of_float(value.as_double());
    if (value.is_string()) {
      const std::string text = strip(value.text, Value::none(), true, true);
      char* end = nullptr;
      const double parsed = std::strtod(text.c_str(), &end);
      if (!text.empty() && end == text.c_str() + text.size()) return Value::of_float(parsed);
    }
    return fallback;
  }
  const Value fallback = argument(args, 0, "default", Value::of_int(0));
  if (value.is_integral()) return Value::of_int(value.as_int());
  if (value.kind == Value::Kind::kFloat) return Value::of_int(static_cast<int64_t>(value.number));
  if (value.is_string()) {
    const std::string text = strip(value.text, Value::none(), true, true);
    int64_t parsed = 0;
    const auto result = std::from_chars(text.data() + (text.size() > 1 && text[0] == '+' ? 1 : 0), text.data() + text.size(), parsed);
    if (!text.empty() && result.ec == std::errc() && result.ptr == text.data() + text.size()) return Value::of_int(parsed);
    char* end = nullptr;
    const double as_float = std::strtod(text.c_str(), &end);
    if (!text.empty() && end == text.c_str() + text.size()) return Value::of_int(static_cast<int64_t>(as_float));
  }
  return fallback;
}

Value indent_filter(const Value& value, const CallArgs& args) {
  check_arguments(args, 3, {"width", "first", "blank"}, "indent");
  const Value width = argument(args, 0, "width", Value::of_int(4));
  const std::string pad = width.is_string() ? width.text : std::string(static_cast<size_t>(std::max<int64_t>(0, int_argument(width, "width"))), ' ');
  const bool first = truthy(argument(args, 1, "first")), blank = truthy(argument(args, 2, "blank"));
  // Jinja splits with str.splitlines(): \n, \r\n, \r and a few Unicode separators; a chat
  // template's text uses \n, and the others are refused rather than cut differently.
  const std::string text = python_str(value);
  for (const char c : {'\r', '\v', '\f', '\x1c', '\x1d', '\x1e'}) {
    if (text.find(c) != std::string::npos) fail("indent of text holding line separators other than \\n is not supported");
  }
  std::string out;
  size_t begin = 0;
  bool first_line = true;
  while (begin <= text.size()) {
    const size_t newline = text.find('\n', begin);
    const std::string line = text.substr(begin, newline == std::string::npos ? std::string::npos : newline - begin);
    const bool pad_line = (first_line ? first : true) && (blank || !line.empty());
    out += (pad_line ? pad : "") + line;
    if (newline == std::string::npos) break;
    out += '\n';
    begin = newline + 1;
    first_line = false;
  }
  return Value::of_string(out);
}

Value apply_filter(const std::string& name, const Value& value, const CallArgs& args) {
  if (name == "tojson") return tojson_filter(value, args);
  if (name == "trim") return Value::of_string(strip(python_str(value), argument(args, 0, "chars"), true, true));
  if (name == "length" || name == "count") return Value::of_int(length_of(value));
  if (name == "string") return Value::of_string(python_str(value));
  if (name == "safe") return value;
  if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") return Value::of_string(change_case(python_str(value), name));
  if (name == "default" || name == "d") {
    const bool boolean = truthy(argument(args, 1, "boolean"));
    return (value.is_undefined() || (boolean && !truthy(value))) ? argument(args, 0, "default_value", Value::of_string("")) : value;
  }
  if (name == "first" || name == "last") {
    const List items = iterate(value);
    if (items.empty()) return Value::undefined(core::str_cat("No ", name, " item, sequence was empty."));
    return name == "first" ? items.front() : items.back();
  }
  if (name == "list") return Value::of_list(iterate(value));
  if (name == "reverse") {
    if (value.is_string()) return slice(value, Value::none(), Value::none(), Value::of_int(-1));
    List items = iterate(value);
    std::reverse(items.begin(), items.end());
    return Value::of_list(std::move(items));
  }
  if (name == "items") {
    if (value.is_undefined()) return Value::of_list({});
    if (value.kind != Value::Kind::kDict) fail(core::str_cat("items filter: expected a mapping, got ", type_name(value)));
    CallArgs none;
    return dict_method(value.dict, "items", none);
  }
  if (name == "dictsort") {
    if (value.kind != Value::Kind::kDict) fail(core::str_cat("dictsort: expected a mapping, got ", type_name(value)));
    check_arguments(args, 3, {"case_sensitive", "by", "reverse"}, "dictsort");
    const bool case_sensitive = truthy(argument(args, 0, "case_sensitive"));
    const std::string by = string_argument(argument(args, 1, "by", Value::of_string("key")), "by");
    const bool reverse = truthy(argument(args, 2, "reverse"));
    CallArgs none;
    List items = *dict_method(value.dict, "items", none).list;
    const size_t at = by == "value" ? 1 : 0;
    std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) {
      const Value x = sort_key((*a.list)[at], case_sensitive), y = sort_key((*b.list)[at], case_sensitive);
      return reverse ? less(y, x) : less(x, y);
    });
    return Value::of_list(std::move(items));
  }
  if (name == "join") {
    const Value attribute = argument(args, 1, "attribute", Value::none());
    const std::string separator = python_str(argument(args, 0, "d", Value::of_string("")));
    std::string out;
    const List items = iterate(value);
    for (size_t i = 0; i < items.size(); ++i) {
      out += (i ? separator : "") + python_str(attribute.kind == Value::Kind::kNone ? items[i] : follow_attribute(items[i], attribute));
    }
    return Value::of_string(out);
  }
  if (name == "replace") {
    const Value count = argument(args, 2, "count", Value::none());
    return Value::of_string(replace(python_str(value), python_str(argument(args, 0, "old")), python_str(argument(args, 1, "new")),
                                    count.kind == Value::Kind::kNone ? -1 : int_argument(count, "count")));
  }
  if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") return select_filter(name, value, args);
  if (name == "map") return map_filter(value, args);
  if (name == "sort") return sort_filter(value, args);
  if (name == "min" || name == "max") return extreme_filter(name, value, args);
  if (name == "unique") {
    check_arguments(args, 2, {"case_sensitive", "attribute"}, "unique");
    const bool case_sensitive = truthy(argument(args, 0, "case_sensitive"));
    const Value attribute = argument(args, 1, "attribute", Value::none());
    List kept, seen;
    for (const Value& item : iterate(value)) {
      const Value key = sort_key(attribute.kind == Value::Kind::kNone ? item : follow_attribute(item, attribute), case_sensitive);
      if (std::any_of(seen.begin(), seen.end(), [&](const Value& s) { return equal(s, key); })) continue;
      seen.push_back(key);
      kept.push_back(item);
    }
    return Value::of_list(std::move(kept));
  }
  if (name == "sum") {
    const Value attribute = argument(args, 0, "attribute", Value::none());
    Value total = argument(args, 1, "start", Value::of_int(0));
    for (const Value& item : iterate(value)) {
      total = arithmetic("+", total, attribute.kind == Value::Kind::kNone ? item : follow_attribute(item, attribute));
    }
    return total;
  }
  if (name == "abs") {
    if (value.kind == Value::Kind::kFloat) return Value::of_float(std::fabs(value.number));
    return Value::of_int(std::llabs(int_argument(value, "abs's value")));
  }
  if (name == "attr") {  // Python attributes only (dict items are not attributes)
    const std::string attribute = string_argument(argument(args, 0, "name"), "attr's name");
    if (value.kind == Value::Kind::kDict && value.dict->type == Dict::Type::kDict && !is_dict_method(attribute)) {
      return Value::undefined(core::str_cat("'dict object' has no attribute '", attribute, "'"));
    }
    return get_attribute(value, attribute);
  }
  if (name == "int" || name == "float") return number_filter(name, value, args);
  if (name == "indent") return indent_filter(value, args);
  fail("unknown filter '" + name + "'");
}

// ============================================================================================
// The tree
// ============================================================================================

struct Expr {
  virtual ~Expr() = default;
  virtual Value eval(Context& context) const = 0;
};
using ExprPtr = std::unique_ptr<Expr>;

struct Stmt {
  int line = 1;
  virtual ~Stmt() = default;
  virtual void exec(Context& context) const = 0;
};
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

// Errors carry the line of the statement being rendered.
struct LinedError {
  std::string message;
  int line = 0;
};

void exec_body(const Body& body, Context& context) {
  for (const StmtPtr& statement : body) {
    try {
      statement->exec(context);
    } catch (const RenderError& error) {
      throw LinedError{error.message, statement->line};
    }
    if (context.flow != Flow::kNormal) return;
  }
}

Value lookup(const Context& context, const std::string& name);

struct LiteralExpr : Expr {
  Value value;
  explicit LiteralExpr(Value v) : value(std::move(v)) {}
  Value eval(Context&) const override { return value; }
};

struct NameExpr : Expr {
  std::string name;
  explicit NameExpr(std::string n) : name(std::move(n)) {}
  Value eval(Context& context) const override { return lookup(context, name); }
};

struct ListExpr : Expr {
  std::vector<ExprPtr> items;
  bool tuple = false;
  Value eval(Context& context) const override {
    List values;
    for (const ExprPtr& item : items) values.push_back(item->eval(context));
    return Value::of_list(std::move(values), tuple);
  }
};

struct DictExpr : Expr {
  std::vector<std::pair<ExprPtr, ExprPtr>> entries;
  Value eval(Context& context) const override {
    auto dict = std::make_shared<Dict>();
    for (const auto& entry : entries) {
      const Value key = entry.first->eval(context);
      if (!key.is_string()) fail(core::str_cat("dict keys must be strings in ChunkFlow's template engine, got ", type_name(key)));
      dict->set(key.text, entry.second->eval(context));
    }
    return Value::of_dict(std::move(dict));
  }
};

struct AttributeExpr : Expr {
  ExprPtr object;
  std::string name;
  Value eval(Context& context) const override { return get_attribute(object->eval(context), name); }
};

struct ItemExpr : Expr {
  ExprPtr object, key;
  Value eval(Context& context) const override { return get_item(object->eval(context), key->eval(context)); }
};

struct SliceExpr : Expr {
  ExprPtr object, start, stop, step;  // null: not given
  Value eval(Context& context) const override {
    const auto value = [&](const ExprPtr& e) { return e ? e->eval(context) : Value::none(); };
    return slice(object->eval(context), value(start), value(stop), value(step));
  }
};

struct Arguments {
  std::vector<ExprPtr> positional;
  std::vector<std::pair<std::string, ExprPtr>> keywords;
  CallArgs eval(Context& context) const {
    CallArgs args;
    for (const ExprPtr& e : positional) args.positional.push_back(e->eval(context));
    for (const auto& entry : keywords) args.keywords.emplace_back(entry.first, entry.second->eval(context));
    return args;
  }
};

struct CallExpr : Expr {
  ExprPtr callee;
  Arguments arguments;
  Value eval(Context& context) const override {
    const Value function = callee->eval(context);
    CallArgs args = arguments.eval(context);
    return call(function, args);
  }
};

struct FilterExpr : Expr {
  ExprPtr operand;
  std::string name;
  Arguments arguments;
  Value eval(Context& context) const override {
    const Value value = operand->eval(context);
    const CallArgs args = arguments.eval(context);
    return apply_filter(name, value, args);
  }
};

struct TestExpr : Expr {
  ExprPtr operand;
  std::string name;
  Arguments arguments;
  bool negated = false;
  Value eval(Context& context) const override {
    const Value value = operand->eval(context);
    const CallArgs args = arguments.eval(context);
    return Value::of_bool(apply_test(name, value, args) != negated);
  }
};

struct UnaryExpr : Expr {
  std::string op;
  ExprPtr operand;
  Value eval(Context& context) const override {
    const Value value = operand->eval(context);
    if (op == "not") return Value::of_bool(!truthy(value));
    if (value.is_undefined()) fail_undefined(value);
    if (!value.is_numeric()) fail(core::str_cat("bad operand type for unary ", op, ": '", type_name(value), "'"));
    if (op == "+") return value.kind == Value::Kind::kFloat ? value : Value::of_int(value.as_int());
    return value.kind == Value::Kind::kFloat ? Value::of_float(-value.number) : Value::of_int(-value.as_int());
  }
};

struct BinaryExpr : Expr {
  std::string op;
  ExprPtr left, right;
  Value eval(Context& context) const override {
    const Value a = left->eval(context);
    if (op == "and") return truthy(a) ? right->eval(context) : a;
    if (op == "or") return truthy(a) ? a : right->eval(context);
    const Value b = right->eval(context);
    if (op == "~") return Value::of_string(python_str(a) + python_str(b));
    return arithmetic(op, a, b);
  }
};

struct CompareExpr : Expr {
  ExprPtr first;
  std::vector<std::pair<std::string, ExprPtr>> rest;
  Value eval(Context& context) const override {
    Value left = first->eval(context);
    for (const auto& [op, expr] : rest) {
      const Value right = expr->eval(context);
      bool result = false;
      if (op == "==") result = equal(left, right);
      else if (op == "!=") result = !equal(left, right);
      else if (op == "<") result = less(left, right);
      else if (op == "<=") result = !less(right, left);
      else if (op == ">") result = less(right, left);
      else if (op == ">=") result = !less(left, right);
      else if (op == "in") result = contains(right, left);
      else result = !contains(right, left);  // "not in"
      if (!result) return Value::of_bool(false);
      left = right;
    }
    return Value::of_bool(true);
  }
};

struct ConditionalExpr : Expr {
  ExprPtr then, condition, otherwise;  // otherwise may be null
  Value eval(Context& context) const override {
    if (truthy(condition->eval(context))) return then->eval(context);
    return otherwise ? otherwise->eval(context) : Value::undefined("the 'else' branch of an inline if was taken but not given");
  }
};

// ---- statements ----------------------------------------------------------------------------

struct TextStmt : Stmt {
  std::string text;
  void exec(Context& context) const override { *context.out += text; }
};

struct OutputStmt : Stmt {
  ExprPtr expr;
  void exec(Context& context) const override { *context.out += python_str(expr->eval(context)); }
};

struct IfStmt : Stmt {
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body otherwise;
  void exec(Context& context) const override {
    for (const auto& [condition, body] : branches) {
      if (truthy(condition->eval(context))) {
        exec_body(body, context);
        return;
      }
    }
    exec_body(otherwise, context);
  }
};

void assign(Context& context, const std::vector<std::string>& targets, const Value& value) {
  if (targets.size() == 1) {
    context.frame->set(targets[0], value);
    return;
  }
  if (value.kind != Value::Kind::kList) fail(core::str_cat("cannot unpack non-iterable ", type_name(value), " object"));
  if (value.list->size() != targets.size()) {
    fail(core::str_cat(value.list->size() > targets.size() ? "too many" : "not enough", " values to unpack (expected ",
                       targets.size(), ", got ", value.list->size(), ")"));
  }
  for (size_t i = 0; i < targets.size(); ++i) context.frame->set(targets[i], (*value.list)[i]);
}

// Restores the render state a nested scope changed, however the scope is left.
struct ScopeGuard {
  Context& context;
  Frame* frame;
  std::string* out;
  bool capturing;
  explicit ScopeGuard(Context& c) : context(c), frame(c.frame), out(c.out), capturing(c.capturing) {}
  ~ScopeGuard() {
    context.frame = frame;
    context.out = out;
    context.capturing = capturing;
  }
  ScopeGuard(const ScopeGuard&) = delete;
  ScopeGuard& operator=(const ScopeGuard&) = delete;
};

struct ForStmt : Stmt {
  std::vector<std::string> targets;
  ExprPtr iterable, filter;  // filter may be null
  Body body, otherwise;

  void exec(Context& context) const override {
    List items = iterate(iterable->eval(context));
    Frame frame;
    frame.parent = context.frame;
    {
      ScopeGuard guard(context);
      context.frame = &frame;
      if (filter) {
        List kept;
        for (const Value& item : items) {
          assign(context, targets, item);
          if (truthy(filter->eval(context))) kept.push_back(item);
        }
        items = std::move(kept);
      }
      run(context, items, frame);
    }
    if (items.empty()) exec_body(otherwise, context);
  }

  void run(Context& context, const List& items, Frame& frame) const {
    const int64_t count = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < count; ++i) {
      assign(context, targets, items[static_cast<size_t>(i)]);
      auto loop = std::make_shared<Dict>();
      loop->type = Dict::Type::kLoop;
      loop->entries = {{"index", Value::of_int(i + 1)},
                       {"index0", Value::of_int(i)},
                       {"revindex", Value::of_int(count - i)},
                       {"revindex0", Value::of_int(count - i - 1)},
                       {"first", Value::of_bool(i == 0)},
                       {"last", Value::of_bool(i == count - 1)},
                       {"length", Value::of_int(count)},
                       {"depth", Value::of_int(1)},
                       {"depth0", Value::of_int(0)},
                       {"previtem", i > 0 ? items[static_cast<size_t>(i - 1)] : Value::undefined("there is no previous item")},
                       {"nextitem", i + 1 < count ? items[static_cast<size_t>(i + 1)] : Value::undefined("there is no next item")}};
      loop->entries.emplace_back("cycle", make_callable("loop.cycle", [i](CallArgs& args) {
                                   if (args.positional.empty()) fail("no items for cycling given");
                                   return args.positional[static_cast<size_t>(i) % args.positional.size()];
                                 }));
      frame.set("loop", Value::of_dict(loop));
      exec_body(body, context);
      if (context.flow == Flow::kBreak) {
        context.flow = Flow::kNormal;
        break;
      }
      context.flow = Flow::kNormal;
    }
  }
};

struct SetStmt : Stmt {
  std::vector<std::string> targets;  // one name, or several to unpack
  std::string namespace_name;        // set ns.attribute = ... when not empty (targets[0] = attribute)
  ExprPtr value;                     // null: a block set, whose output is the value
  Body body;

  void exec(Context& context) const override {
    Value result;
    if (value) {
      result = value->eval(context);
    } else {
      std::string captured;
      ScopeGuard guard(context);
      context.out = &captured;
      context.capturing = true;
      exec_body(body, context);
      result = Value::of_string(captured);
    }
    if (namespace_name.empty()) {
      assign(context, targets, result);
      return;
    }
    const Value target = lookup(context, namespace_name);
    if (target.kind != Value::Kind::kDict || target.dict->type != Dict::Type::kNamespace) {
      fail("cannot assign attribute on non-namespace object '" + namespace_name + "'");
    }
    target.dict->set(targets[0], result);
  }
};

struct MacroStmt : Stmt {
  std::string name;
  std::vector<std::pair<std::string, ExprPtr>> parameters;  // default may be null
  Body body;

  void exec(Context& context) const override {
    Context* render = &context;
    const MacroStmt* macro = this;
    context.frame->set(name, make_callable(name, [render, macro](CallArgs& args) { return macro->invoke(*render, args); }));
  }

  Value invoke(Context& context, CallArgs& args) const {
    if (args.positional.size() > parameters.size()) {
      fail(core::str_cat("macro '", name, "' takes not more than ", parameters.size(), " argument(s)"));
    }
    if (context.macro_depth >= 64) fail("macro '" + name + "' recursed too deeply");
    Frame frame;
    frame.parent = context.root;
    std::string captured;
    ScopeGuard guard(context);
    context.frame = &frame;
    context.out = &captured;
    context.capturing = true;
    for (const auto& entry : args.keywords) {
      if (std::none_of(parameters.begin(), parameters.end(), [&](const auto& p) { return p.first == entry.first; })) {
        fail(core::str_cat("macro '", name, "' has no parameter '", entry.first, "'"));
      }
    }
    for (size_t i = 0; i < parameters.size(); ++i) {
      const auto& [parameter, fallback] = parameters[i];
      if (const Value* named = keyword(args, parameter)) {
        frame.set(parameter, *named);
      } else if (i < args.positional.size()) {
        frame.set(parameter, args.positional[i]);
      } else {
        frame.set(parameter, fallback ? fallback->eval(context)
                                      : Value::undefined(core::str_cat("parameter '", parameter, "' was not provided")));
      }
    }
    ++context.macro_depth;
    try {
      exec_body(body, context);
    } catch (...) {
      --context.macro_depth;
      throw;
    }
    --context.macro_depth;
    return Value::of_string(captured);
  }
};

struct FlowStmt : Stmt {
  Flow flow = Flow::kBreak;
  void exec(Context& context) const override { context.flow = flow; }
};

// transformers' AssistantTracker: the output of the block is one generation span.
struct GenerationStmt : Stmt {
  Body body;
  void exec(Context& context) const override {
    if (context.capturing) fail("a {% generation %} block inside a macro or a block set is not supported");
    const size_t begin = context.out->size();
    exec_body(body, context);
    context.spans->emplace_back(begin, context.out->size());
  }
};

// ---- globals -------------------------------------------------------------------------------

Value range_global(CallArgs& args) {
  check_arguments(args, 3, {}, "range");
  if (args.positional.empty()) fail("range expected at least 1 argument, got 0");
  int64_t start = 0, stop = 0, step = 1;
  if (args.positional.size() == 1) {
    stop = int_argument(args.positional[0], "range's argument");
  } else {
    start = int_argument(args.positional[0], "range's start");
    stop = int_argument(args.positional[1], "range's stop");
    if (args.positional.size() == 3) step = int_argument(args.positional[2], "range's step");
  }
  if (step == 0) fail("range() arg 3 must not be zero");
  List items;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
    // The sandbox's limit (jinja2.sandbox.MAX_RANGE).
    if (items.size() >= 100000) fail("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
    items.push_back(Value::of_int(i));
  }
  return Value::of_list(std::move(items));
}

Value dict_global(CallArgs& args, Dict::Type type) {
  auto dict = std::make_shared<Dict>();
  dict->type = type;
  if (args.positional.size() > 1) fail("namespace() / dict() take at most one positional argument");
  if (!args.positional.empty()) {
    const Value& initial = args.positional[0];
    if (initial.kind != Value::Kind::kDict) fail(core::str_cat("cannot build a namespace / dict from ", type_name(initial)));
    dict->entries = initial.dict->entries;
  }
  for (const auto& entry : args.keywords) dict->set(entry.first, entry.second);
  return Value::of_dict(std::move(dict));
}

Value strftime_now_global(CallArgs& args) {
  check_arguments(args, 1, {}, "strftime_now");
  const std::string format = string_argument(argument(args, 0, ""), "strftime_now's format");
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char buffer[512];
  const size_t written = std::strftime(buffer, sizeof(buffer), format.c_str(), &local);
  if (written == 0 && !format.empty()) fail("strftime_now: the formatted date is empty or too long for '" + format + "'");
  return Value::of_string(std::string(buffer, written));
}

const Dict& globals() {
  static const Dict table = [] {
    Dict dict;
    dict.set("range", make_callable("range", range_global));
    dict.set("namespace", make_callable("namespace", [](CallArgs& args) { return dict_global(args, Dict::Type::kNamespace); }));
    dict.set("dict", make_callable("dict", [](CallArgs& args) { return dict_global(args, Dict::Type::kDict); }));
    dict.set("raise_exception", make_callable("raise_exception", [](CallArgs& args) -> Value {
               throw TemplateRaised{python_str(argument(args, 0, "message"))};
             }));
    dict.set("strftime_now", make_callable("strftime_now", strftime_now_global));
    return dict;
  }();
  return table;
}

Value lookup(const Context& context, const std::string& name) {
  if (const Value* found = context.frame->find(name)) return *found;
  if (const Value* found = context.variables->find(name)) return *found;
  if (const Value* found = globals().find(name)) return *found;
  return Value::undefined("'" + name + "' is undefined");
}

// ============================================================================================
// Parser: Jinja's grammar and operator precedence (jinja2/parser.py), over the tokens above.
// ============================================================================================

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  Body parse_template(bool& has_generation) {
    std::string end;
    Body body = parse_body({}, end);
    has_generation = has_generation_;
    return body;
  }

 private:
  const Token& current() const { return tokens_[position_]; }
  const Token& peek(size_t ahead = 1) const { return tokens_[std::min(position_ + ahead, tokens_.size() - 1)]; }
  Token next() { return tokens_[position_ < tokens_.size() - 1 ? position_++ : position_]; }
  [[noreturn]] void error(const std::string& message) const { throw SyntaxError{message, current().line}; }

  bool at_operator(const char* op) const { return current().type == TokenType::kOperator && current().value == op; }
  bool at_name(const char* name) const { return current().type == TokenType::kName && current().value == name; }
  bool skip_operator(const char* op) {
    if (!at_operator(op)) return false;
    next();
    return true;
  }
  bool skip_name(const char* name) {
    if (!at_name(name)) return false;
    next();
    return true;
  }
  void expect_operator(const char* op) {
    if (!skip_operator(op)) error(core::str_cat("expected '", op, "', got ", describe(current())));
  }
  std::string expect_name() {
    if (current().type != TokenType::kName) error(core::str_cat("expected a name, got ", describe(current())));
    return next().value;
  }
  void expect_block_end() {
    if (current().type != TokenType::kBlockEnd) error(core::str_cat("expected the end of the tag ('%}'), got ", describe(current())));
    next();
  }
  static std::string describe(const Token& token) {
    switch (token.type) {
      case TokenType::kBlockEnd: return "the end of the tag";
      case TokenType::kVariableEnd: return "the end of the print statement";
      case TokenType::kEnd: return "the end of the template";
      case TokenType::kString: return "a string";
      default: return "'" + token.value + "'";
    }
  }

  // Statements until a block tag whose keyword is in `ends` (left in `end`, the tag's keyword
  // consumed), or the end of the template when `ends` is empty.
  Body parse_body(const std::set<std::string>& ends, std::string& end) {
    Body body;
    while (true) {
      const Token& token = current();
      if (token.type == TokenType::kEnd) {
        if (!ends.empty()) error(core::str_cat("unexpected end of template; expected {% ", *ends.begin(), " %}"));
        return body;
      }
      if (token.type == TokenType::kText) {
        auto text = std::make_unique<TextStmt>();
        text->line = token.line;
        text->text = next().value;
        body.push_back(std::move(text));
        continue;
      }
      if (token.type == TokenType::kVariableBegin) {
        next();
        auto output = std::make_unique<OutputStmt>();
        output->line = token.line;
        output->expr = parse_tuple(true);
        if (current().type != TokenType::kVariableEnd) error(core::str_cat("expected '}}', got ", describe(current())));
        next();
        body.push_back(std::move(output));
        continue;
      }
      if (token.type != TokenType::kBlockBegin) error("unexpected " + describe(token));
      next();
      const std::string keyword = expect_name();
      if (ends.count(keyword)) {
        end = keyword;
        return body;
      }
      StmtPtr statement = parse_statement(keyword);
      statement->line = token.line;
      body.push_back(std::move(statement));
    }
  }

  StmtPtr parse_statement(const std::string& keyword) {
    if (keyword == "if") return parse_if();
    if (keyword == "for") return parse_for();
    if (keyword == "set") return parse_set();
    if (keyword == "macro") return parse_macro();
    if (keyword == "generation") {
      expect_block_end();
      auto generation = std::make_unique<GenerationStmt>();
      std::string end;
      generation->body = parse_body({"endgeneration"}, end);
      expect_block_end();
      has_generation_ = true;
      return generation;
    }
    if (keyword == "break" || keyword == "continue") {
      if (loop_depth_ == 0) error("'" + keyword + "' outside of a for loop");
      expect_block_end();
      auto flow = std::make_unique<FlowStmt>();
      flow->flow = keyword == "break" ? Flow::kBreak : Flow::kContinue;
      return flow;
    }
    static const std::set<std::string> unsupported = {"raw", "filter", "call", "include", "import", "from", "extends",
                                                       "block", "with", "autoescape", "do", "trans", "pluralize"};
    if (unsupported.count(keyword)) error("the tag '{% " + keyword + " %}' is not supported by ChunkFlow's chat template engine");
    error("unknown or misplaced tag '" + keyword + "'");
  }

  StmtPtr parse_if() {
    auto statement = std::make_unique<IfStmt>();
    std::string end = "elif";
    while (end == "elif") {
      ExprPtr condition = parse_tuple(false);
      expect_block_end();
      Body body = parse_body({"elif", "else", "endif"}, end);
      statement->branches.emplace_back(std::move(condition), std::move(body));
    }
    if (end == "else") {
      expect_block_end();
      statement->otherwise = parse_body({"endif"}, end);
    }
    expect_block_end();
    return statement;
  }

  std::vector<std::string> parse_targets() {
    const bool parenthesized = skip_operator("(");
    std::vector<std::string> targets{expect_name()};
    while (skip_operator(",")) {
      if (current().type != TokenType::kName) break;
      targets.push_back(expect_name());
    }
    if (parenthesized) expect_operator(")");
    return targets;
  }

  StmtPtr parse_for() {
    auto statement = std::make_unique<ForStmt>();
    statement->targets = parse_targets();
    if (!skip_name("in")) error(core::str_cat("expected 'in', got ", describe(current())));
    statement->iterable = parse_tuple(false);
    if (skip_name("if")) statement->filter = parse_expression(true);
    if (at_name("recursive")) error("recursive for loops are not supported by ChunkFlow's chat template engine");
    expect_block_end();
    ++loop_depth_;
    std::string end;
    statement->body = parse_body({"endfor", "else"}, end);
    --loop_depth_;
    if (end == "else") {
      expect_block_end();
      statement->otherwise = parse_body({"endfor"}, end);
    }
    expect_block_end();
    return statement;
  }

  StmtPtr parse_set() {
    auto statement = std::make_unique<SetStmt>();
    const std::string first = expect_name();
    if (skip_operator(".")) {
      statement->namespace_name = first;
      statement->targets = {expect_name()};
    } else {
      statement->targets = {first};
      while (skip_operator(",")) statement->targets.push_back(expect_name());
    }
    if (skip_operator("=")) {
      statement->value = parse_tuple(true);
      expect_block_end();
      return statement;
    }
    if (at_operator("|")) error("filters on block sets are not supported by ChunkFlow's chat template engine");
    if (statement->targets.size() != 1) error("a block set takes one name");
    expect_block_end();
    std::string end;
    statement->body = parse_body({"endset"}, end);
    expect_block_end();
    return statement;
  }

  StmtPtr parse_macro() {
    auto statement = std::make_unique<MacroStmt>();
    statement->name = expect_name();
    expect_operator("(");
    while (!at_operator(")")) {
      if (!statement->parameters.empty()) expect_operator(",");
      if (at_operator(")")) break;
      const std::string parameter = expect_name();
      ExprPtr fallback = skip_operator("=") ? parse_expression(true) : nullptr;
      statement->parameters.emplace_back(parameter, std::move(fallback));
    }
    expect_operator(")");
    expect_block_end();
    const int saved_loops = loop_depth_;
    loop_depth_ = 0;
    std::string end;
    statement->body = parse_body({"endmacro"}, end);
    loop_depth_ = saved_loops;
    expect_block_end();
    return statement;
  }

  // ---- expressions ----

  ExprPtr parse_tuple(bool with_conditional) {
    ExprPtr first = parse_expression(with_conditional);
    if (!at_operator(",")) return first;
    auto tuple = std::make_unique<ListExpr>();
    tuple->tuple = true;
    tuple->items.push_back(std::move(first));
    while (skip_operator(",")) {
      if (current().type == TokenType::kBlockEnd || current().type == TokenType::kVariableEnd || at_operator(")")) break;
      tuple->items.push_back(parse_expression(with_conditional));
    }
    return tuple;
  }

  ExprPtr parse_expression(bool with_conditional) { return with_conditional ? parse_conditional() : parse_or(); }

  ExprPtr parse_conditional() {
    ExprPtr expr = parse_or();
    while (skip_name("if")) {
      auto conditional = std::make_unique<ConditionalExpr>();
      conditional->then = std::move(expr);
      conditional->condition = parse_or();
      if (skip_name("else")) conditional->otherwise = parse_conditional();
      expr = std::move(conditional);
    }
    return expr;
  }

  static ExprPtr binary(const std::string& op, ExprPtr left, ExprPtr right) {
    auto node = std::make_unique<BinaryExpr>();
    node->op = op;
    node->left = std::move(left);
    node->right = std::move(right);
    return node;
  }

  ExprPtr parse_or() {
    ExprPtr left = parse_and();
    while (skip_name("or")) left = binary("or", std::move(left), parse_and());
    return left;
  }

  ExprPtr parse_and() {
    ExprPtr left = parse_not();
    while (skip_name("and")) left = binary("and", std::move(left), parse_not());
    return left;
  }

  ExprPtr parse_not() {
    if (skip_name("not")) {
      auto node = std::make_unique<UnaryExpr>();
      node->op = "not";
      node->operand = parse_not();
      return node;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    ExprPtr first = parse_math1();
    std::vector<std::pair<std::string, ExprPtr>> rest;
    while (true) {
      std::string op;
      if (current().type == TokenType::kOperator &&
          (current().value == "==" || current().value == "!=" || current().value == "<" || current().value == "<=" ||
           current().value == ">" || current().value == ">=")) {
        op = next().value;
      } else if (skip_name("in")) {
        op = "in";
      } else if (at_name("not") && peek().type == TokenType::kName && peek().value == "in") {
        next();
        next();
        op = "not in";
      } else {
        break;
      }
      rest.emplace_back(op, parse_math1());
    }
    if (rest.empty()) return first;
    auto node = std::make_unique<CompareExpr>();
    node->first = std::move(first);
    node->rest = std::move(rest);
    return node;
  }

  ExprPtr parse_math1() {
    ExprPtr left = parse_concat();
    while (at_operator("+") || at_operator("-")) {
      const std::string op = next().value;
      left = binary(op, std::move(left), parse_concat());
    }
    return left;
  }

  ExprPtr parse_concat() {
    ExprPtr left = parse_math2();
    while (skip_operator("~")) left = binary("~", std::move(left), parse_math2());
    return left;
  }

  ExprPtr parse_math2() {
    ExprPtr left = parse_pow();
    while (at_operator("*") || at_operator("/") || at_operator("//") || at_operator("%")) {
      const std::string op = next().value;
      left = binary(op, std::move(left), parse_pow());
    }
    return left;
  }

  ExprPtr parse_pow() {
    ExprPtr left = parse_unary(true);
    while (skip_operator("**")) left = binary("**", std::move(left), parse_unary(true));
    return left;
  }

  ExprPtr parse_unary(bool with_filter) {
    ExprPtr node;
    if (at_operator("-") || at_operator("+")) {
      auto unary = std::make_unique<UnaryExpr>();
      unary->op = next().value;
      unary->operand = parse_unary(false);
      node = std::move(unary);
    } else {
      node = parse_postfix(parse_primary());
    }
    return with_filter ? parse_filter_expr(std::move(node)) : std::move(node);
  }

  ExprPtr parse_primary() {
    const Token token = next();
    switch (token.type) {
      case TokenType::kName: {
        if (token.value == "true" || token.value == "True") return std::make_unique<LiteralExpr>(Value::of_bool(true));
        if (token.value == "false" || token.value == "False") return std::make_unique<LiteralExpr>(Value::of_bool(false));
        if (token.value == "none" || token.value == "None") return std::make_unique<LiteralExpr>(Value::none());
        return std::make_unique<NameExpr>(token.value);
      }
      case TokenType::kString: {
        std::string text = token.value;
        while (current().type == TokenType::kString) text += next().value;  // adjacent literals join
        return std::make_unique<LiteralExpr>(Value::of_string(text));
      }
      case TokenType::kInteger: {
        int64_t value = 0;
        const auto result = std::from_chars(token.value.data(), token.value.data() + token.value.size(), value);
        if (result.ec != std::errc()) throw SyntaxError{"the integer " + token.value + " is out of range", token.line};
        return std::make_unique<LiteralExpr>(Value::of_int(value));
      }
      case TokenType::kFloat: return std::make_unique<LiteralExpr>(Value::of_float(std::strtod(token.value.c_str(), nullptr)));
      case TokenType::kOperator: {
        if (token.value == "(") {
          if (skip_operator(")")) {
            auto empty = std::make_unique<ListExpr>();
            empty->tuple = true;
            return empty;
          }
          ExprPtr inner = parse_tuple(true);
          expect_operator(")");
          return inner;
        }
        if (token.value == "[") {
          auto list = std::make_unique<ListExpr>();
          while (!at_operator("]")) {
            if (!list->items.empty()) expect_operator(",");
            if (at_operator("]")) break;
            list->items.push_back(parse_expression(true));
          }
          expect_operator("]");
          return list;
        }
        if (token.value == "{") {
          auto dict = std::make_unique<DictExpr>();
          while (!at_operator("}")) {
            if (!dict->entries.empty()) expect_operator(",");
            if (at_operator("}")) break;
            ExprPtr key = parse_expression(true);
            expect_operator(":");
            dict->entries.emplace_back(std::move(key), parse_expression(true));
          }
          expect_operator("}");
          return dict;
        }
        break;
      }
      default: break;
    }
    throw SyntaxError{"unexpected " + describe(token), token.line};
  }

  ExprPtr parse_postfix(ExprPtr node) {
    while (true) {
      if (skip_operator(".")) {
        if (current().type == TokenType::kInteger) {
          auto item = std::make_unique<ItemExpr>();
          item->object = std::move(node);
          item->key = std::make_unique<LiteralExpr>(Value::of_int(std::stoll(next().value)));
          node = std::move(item);
          continue;
        }
        auto attribute = std::make_unique<AttributeExpr>();
        attribute->object = std::move(node);
        attribute->name = expect_name();
        node = std::move(attribute);
      } else if (skip_operator("[")) {
        node = parse_subscript(std::move(node));
      } else if (at_operator("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr object) {
    ExprPtr parts[3];
    int colons = 0;
    while (!at_operator("]")) {
      if (skip_operator(":")) {
        if (++colons > 2) error("a slice takes at most start:stop:step");
        continue;
      }
      if (parts[colons]) error(core::str_cat("expected ':' or ']', got ", describe(current())));
      parts[colons] = parse_expression(true);
    }
    expect_operator("]");
    if (colons == 0) {
      if (!parts[0]) error("an empty subscript []");
      auto item = std::make_unique<ItemExpr>();
      item->object = std::move(object);
      item->key = std::move(parts[0]);
      return item;
    }
    auto node = std::make_unique<SliceExpr>();
    node->object = std::move(object);
    node->start = std::move(parts[0]);
    node->stop = std::move(parts[1]);
    node->step = std::move(parts[2]);
    return node;
  }

  Arguments parse_arguments() {
    Arguments arguments;
    expect_operator("(");
    while (!at_operator(")")) {
      if (!arguments.positional.empty() || !arguments.keywords.empty()) expect_operator(",");
      if (at_operator(")")) break;
      if (at_operator("*") || at_operator("**")) error("*args and **kwargs in calls are not supported by ChunkFlow's chat template engine");
      if (current().type == TokenType::kName && peek().type == TokenType::kOperator && peek().value == "=") {
        const std::string name = next().value;
        next();
        arguments.keywords.emplace_back(name, parse_expression(true));
      } else {
        if (!arguments.keywords.empty()) error("a positional argument follows a keyword argument");
        arguments.positional.push_back(parse_expression(true));
      }
    }
    expect_operator(")");
    return arguments;
  }

  ExprPtr parse_call(ExprPtr callee) {
    auto node = std::make_unique<CallExpr>();
    node->callee = std::move(callee);
    node->arguments = parse_arguments();
    return node;
  }

  std::string dotted_name() {
    std::string name = expect_name();
    while (at_operator(".") && peek().type == TokenType::kName) {
      next();
      name += "." + next().value;
    }
    return name;
  }

  ExprPtr parse_filter_expr(ExprPtr node) {
    while (true) {
      if (skip_operator("|")) {
        auto filter = std::make_unique<FilterExpr>();
        filter->operand = std::move(node);
        filter->name = dotted_name();
        if (!filter_names().count(filter->name)) {
          error("the filter '" + filter->name + "' is not supported by ChunkFlow's chat template engine");
        }
        if (at_operator("(")) filter->arguments = parse_arguments();
        node = std::move(filter);
      } else if (skip_name("is")) {
        auto test = std::make_unique<TestExpr>();
        test->operand = std::move(node);
        test->negated = skip_name("not");
        test->name = dotted_name();
        if (!test_names().count(test->name)) error("the test '" + test->name + "' is not supported by ChunkFlow's chat template engine");
        const TokenType type = current().type;
        if (at_operator("(")) {
          test->arguments = parse_arguments();
        } else if ((type == TokenType::kName || type == TokenType::kString || type == TokenType::kInteger ||
                    type == TokenType::kFloat || at_operator("[") || at_operator("{")) &&
                   !at_name("else") && !at_name("or") && !at_name("and")) {
          if (at_name("is")) error("You cannot chain multiple tests with is");
          test->arguments.positional.push_back(parse_postfix(parse_primary()));
        }
        node = std::move(test);
      } else if (at_operator("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  std::vector<Token> tokens_;
  size_t position_ = 0;
  int loop_depth_ = 0;
  bool has_generation_ = false;
};

}  // namespace

// ============================================================================================
// JinjaTemplate
// ============================================================================================

struct JinjaTemplate::Program {
  std::string name;
  Body body;
  bool has_generation = false;
};

JinjaTemplate JinjaTemplate::parse(const std::string& source, const std::string& name) {
  auto program = std::make_shared<Program>();
  program->name = name;
  try {
    Parser parser(Lexer(source).run());
    program->body = parser.parse_template(program->has_generation);
  } catch (const SyntaxError& error) {
    CF_FAIL(name, ":", error.line, ": ", error.message);
  } catch (const core::Error& error) {  // invalid UTF-8 in the template
    CF_FAIL(name, ": ", error.what());
  }
  JinjaTemplate result;
  result.program_ = std::move(program);
  return result;
}

JinjaTemplate::Rendered JinjaTemplate::render(const nlohmann::ordered_json& variables) const {
  CF_CHECK(variables.is_object(), program_->name, ": template variables must be a JSON object");
  Rendered rendered;
  try {
    const Value values = from_json(variables);
    Frame root;
    Context context;
    context.variables = values.dict.get();
    context.root = &root;
    context.frame = &root;
    context.out = &rendered.text;
    context.spans = &rendered.generation_spans;
    exec_body(program_->body, context);
  } catch (const LinedError& error) {
    CF_FAIL(program_->name, ":", error.line, ": ", error.message);
  } catch (const RenderError& error) {
    CF_FAIL(program_->name, ": ", error.message);
  } catch (const TemplateRaised& raised) {
    CF_FAIL(program_->name, ": the template raised: ", raised.message);
  }
  return rendered;
}

bool JinjaTemplate::has_generation_blocks() const { return program_->has_generation; }
const std::string& JinjaTemplate::name() const { return program_->name; }

}  // namespace chunkflow::data
