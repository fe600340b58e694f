// The calls a chat template makes: attributes, items, slices, string and dict methods, filters,
// tests and globals, as Jinja and Python define them; see jinja_value.h.
#include "data/jinja_value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <ctime>

#include "core/error.h"
#include "core/strings.h"
#include "data/utf8.h"

namespace chunkflow::data::jinja_detail {

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

// attribute="a.b" or an integer index path, as Jinja's make_attrgetter follows it; None: the item.
Value follow_attribute(const Value& item, const Value& attribute) {
  if (attribute.kind == Value::Kind::kNone) return item;
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
  const auto key = [&](const Value& item) { return sort_key(follow_attribute(item, attribute), case_sensitive); };
  std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) { return reverse ? less(key(b), key(a)) : less(key(a), key(b)); });
  return Value::of_list(std::move(items));
}

Value extreme_filter(const std::string& name, const Value& value, const CallArgs& args) {
  check_arguments(args, 2, {"case_sensitive", "attribute"}, name);
  const bool case_sensitive = truthy(argument(args, 0, "case_sensitive"));
  const Value attribute = argument(args, 1, "attribute", Value::none());
  const List items = iterate(value);
  if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
  const auto key = [&](const Value& item) { return sort_key(follow_attribute(item, attribute), case_sensitive); };
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
      out += (i ? separator : "") + python_str(follow_attribute(items[i], attribute));
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
      const Value key = sort_key(follow_attribute(item, attribute), case_sensitive);
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
      total = arithmetic("+", total, follow_attribute(item, attribute));
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

}  // namespace chunkflow::data::jinja_detail
