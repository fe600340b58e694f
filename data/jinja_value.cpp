// Values of the chat-template engine with Python's semantics; see jinja_value.h.
#include "data/jinja_value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <limits>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/strings.h"
#include "data/utf8.h"

namespace chunkflow::data::jinja_detail {

[[noreturn]] void fail(const std::string& message) { throw RenderError{message}; }

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

}  // namespace chunkflow::data::jinja_detail
