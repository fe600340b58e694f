// Jinja2 chat templates as transformers renders them; see jinja.h. A lexer and parser to a tree,
// and a tree-walking renderer over the values of jinja_value.h.
#include "data/jinja.h"

#include <algorithm>
#include <charconv>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/strings.h"
#include "data/jinja_value.h"
#include "data/utf8.h"

namespace chunkflow::data {
namespace {

using namespace jinja_detail;

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
        text = strip(text, Value::none(), false, true);  // Python str.rstrip()
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
// Render state
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
