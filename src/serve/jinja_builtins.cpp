#include "serve/jinja_builtins.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <limits>

#include "serve/jinja_unicode.h"

namespace moex::serve::jinja {
namespace {

Value arg_or(const CallArgs& args, size_t index, const char* keyword, Value fallback) {
  if (index < args.positional.size()) return args.positional[index];
  if (keyword != nullptr) {
    if (const Value* v = args.keyword(keyword)) return *v;
  }
  return fallback;
}

// ---- strings ----

std::vector<size_t> code_point_offsets(const std::string& s) {
  std::vector<size_t> offsets;
  for (size_t pos = 0; pos < s.size();) {
    offsets.push_back(pos);
    uint32_t cp = 0;
    pos += decode_utf8(s, pos, cp);
  }
  return offsets;
}

std::vector<std::string> code_points(const std::string& s) {
  std::vector<std::string> out;
  const std::vector<size_t> offsets = code_point_offsets(s);
  for (size_t i = 0; i < offsets.size(); ++i) {
    const size_t end = i + 1 < offsets.size() ? offsets[i + 1] : s.size();
    out.push_back(s.substr(offsets[i], end - offsets[i]));
  }
  return out;
}

bool is_ascii_word(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

// /\b\w/g upper-cased: the first ASCII word character of every word.
std::string title_case(const std::string& s) {
  std::string out = s;
  for (size_t i = 0; i < out.size(); ++i) {
    if (is_ascii_word(out[i]) && (i == 0 || !is_ascii_word(out[i - 1])) && out[i] >= 'a' && out[i] <= 'z') {
      out[i] = static_cast<char>(out[i] - 32);
    }
  }
  return out;
}

std::string capitalize(const std::string& s) {
  if (s.empty()) return s;
  uint32_t cp = 0;
  const size_t first = decode_utf8(s, 0, cp);
  return to_upper(s.substr(0, first)) + s.substr(first);
}

std::string indent_lines(const std::string& s, const std::string& indent, bool first, bool blank) {
  std::string out;
  size_t line_index = 0;
  size_t start = 0;
  while (true) {
    const size_t end = s.find('\n', start);
    const std::string line = s.substr(start, end == std::string::npos ? std::string::npos : end - start);
    const bool skip = (!first && line_index == 0) || (!blank && line.empty());
    if (!skip) out += indent;
    out += line;
    if (end == std::string::npos) break;
    out += '\n';
    start = end + 1;
    ++line_index;
  }
  return out;
}

// JavaScript's parseInt(s, 10): leading whitespace, a sign and the digits that follow; false
// when there are none.
bool parse_int_prefix(const std::string& s, int64_t& out) {
  const std::string t = js_trim_start(s);
  size_t pos = 0;
  bool negative = false;
  if (pos < t.size() && (t[pos] == '+' || t[pos] == '-')) negative = t[pos++] == '-';
  const size_t digits_start = pos;
  double value = 0;
  while (pos < t.size() && t[pos] >= '0' && t[pos] <= '9') value = value * 10 + (t[pos++] - '0');
  if (pos == digits_start) return false;
  out = static_cast<int64_t>(negative ? -value : value);
  return true;
}

// JavaScript's parseFloat: the longest decimal-literal prefix (or Infinity).
bool parse_float_prefix(const std::string& s, double& out) {
  const std::string t = js_trim_start(s);
  size_t pos = 0;
  if (pos < t.size() && (t[pos] == '+' || t[pos] == '-')) ++pos;
  if (t.compare(pos, 8, "Infinity") == 0) {
    out = t[0] == '-' ? -INFINITY : INFINITY;
    return true;
  }
  const size_t number_start = pos;
  size_t digits = 0;
  while (pos < t.size() && t[pos] >= '0' && t[pos] <= '9') ++pos, ++digits;
  if (pos < t.size() && t[pos] == '.') {
    ++pos;
    while (pos < t.size() && t[pos] >= '0' && t[pos] <= '9') ++pos, ++digits;
  }
  if (digits == 0) return false;
  if (pos < t.size() && (t[pos] == 'e' || t[pos] == 'E')) {
    size_t e = pos + 1;
    if (e < t.size() && (t[e] == '+' || t[e] == '-')) ++e;
    if (e < t.size() && t[e] >= '0' && t[e] <= '9') {
      while (e < t.size() && t[e] >= '0' && t[e] <= '9') ++e;
      pos = e;
    }
  }
  (void)number_start;
  out = std::strtod(t.substr(0, pos).c_str(), nullptr);
  return true;
}

// Python's str.split as @huggingface/jinja implements it.
Value split_string(const std::string& s, const Value& separator, const Value& maxsplit_value) {
  if (separator.type != ValueType::String && separator.type != ValueType::None &&
      separator.type != ValueType::Undefined) {
    fail("split() separator must be a string or none");
  }
  if (maxsplit_value.type != ValueType::Integer) fail("split() maxsplit must be an integer");
  const int64_t maxsplit = maxsplit_value.integer;
  Array parts;
  if (separator.type != ValueType::String) {
    const std::string text = js_trim_start(s);
    size_t pos = 0;
    while (pos < text.size()) {
      while (size_t n = js_whitespace_at(text, pos)) pos += n;
      if (pos >= text.size()) break;
      if (maxsplit != -1 && static_cast<int64_t>(parts.size()) >= maxsplit) {
        parts.push_back(Value::from_string(text.substr(pos)));
        break;
      }
      const size_t start = pos;
      while (pos < text.size() && js_whitespace_at(text, pos) == 0) {
        uint32_t cp = 0;
        pos += decode_utf8(text, pos, cp);
      }
      parts.push_back(Value::from_string(text.substr(start, pos - start)));
    }
    return Value::from_array(std::move(parts));
  }
  const std::string& sep = separator.string;
  if (sep.empty()) fail("split(): empty separator");
  std::vector<std::string> pieces;
  size_t start = 0;
  while (true) {
    const size_t found = s.find(sep, start);
    if (found == std::string::npos) break;
    pieces.push_back(s.substr(start, found - start));
    start = found + sep.size();
  }
  pieces.push_back(s.substr(start));
  if (maxsplit != -1 && static_cast<int64_t>(pieces.size()) > maxsplit) {
    const size_t keep = static_cast<size_t>(std::max<int64_t>(maxsplit, 0));
    std::string rest;
    for (size_t i = keep; i < pieces.size(); ++i) rest += (i > keep ? sep : "") + pieces[i];
    pieces.resize(keep);
    pieces.push_back(rest);
  }
  for (auto& piece : pieces) parts.push_back(Value::from_string(std::move(piece)));
  return Value::from_array(std::move(parts));
}

std::string replace_string(const std::string& s, const std::string& old_text, const std::string& new_text,
                           int64_t count) {
  if (count == 0) return s;
  int64_t remaining = count < 0 ? std::numeric_limits<int64_t>::max() : count;
  std::string out;
  if (old_text.empty()) {  // inserted at every code point boundary, as Python does
    const std::vector<size_t> offsets = code_point_offsets(s);
    for (size_t i = 0; i <= offsets.size(); ++i) {
      if (remaining > 0) {
        out += new_text;
        --remaining;
      }
      if (i < offsets.size()) {
        const size_t end = i + 1 < offsets.size() ? offsets[i + 1] : s.size();
        out.append(s, offsets[i], end - offsets[i]);
      }
    }
    return out;
  }
  size_t start = 0;
  while (remaining > 0) {
    const size_t found = s.find(old_text, start);
    if (found == std::string::npos) break;
    out.append(s, start, found - start);
    out += new_text;
    start = found + old_text.size();
    --remaining;
  }
  out.append(s, start, std::string::npos);
  return out;
}

Value string_method(const std::string& s, const std::string& name) {
  if (name == "length") return Value::from_int(utf16_length(s));
  auto method = [](auto body) { return Value::from_function(body); };
  if (name == "upper") return method([s](const CallArgs&, Scope&) { return Value::from_string(to_upper(s)); });
  if (name == "lower") return method([s](const CallArgs&, Scope&) { return Value::from_string(to_lower(s)); });
  // strip/lstrip/rstrip remove whitespace whatever their argument, as @huggingface/jinja does.
  if (name == "strip") return method([s](const CallArgs&, Scope&) { return Value::from_string(js_trim(s)); });
  if (name == "lstrip") return method([s](const CallArgs&, Scope&) { return Value::from_string(js_trim_start(s)); });
  if (name == "rstrip") return method([s](const CallArgs&, Scope&) { return Value::from_string(js_trim_end(s)); });
  if (name == "title") return method([s](const CallArgs&, Scope&) { return Value::from_string(title_case(s)); });
  if (name == "capitalize") {
    return method([s](const CallArgs&, Scope&) { return Value::from_string(capitalize(s)); });
  }
  if (name == "startswith" || name == "endswith") {
    const bool starts = name == "startswith";
    return method([s, starts, name](const CallArgs& args, Scope&) {
      if (args.positional.empty()) fail(name + "() needs an argument");
      const auto matches = [&](const std::string& affix) {
        if (affix.size() > s.size()) return false;
        return starts ? s.compare(0, affix.size(), affix) == 0
                      : s.compare(s.size() - affix.size(), affix.size(), affix) == 0;
      };
      const Value& pattern = args.positional[0];
      if (pattern.type == ValueType::String) return Value::from_bool(matches(pattern.string));
      if (pattern.type == ValueType::Array) {
        for (const Value& item : *pattern.array) {
          if (item.type != ValueType::String) fail(name + "() tuple elements must be strings");
          if (matches(item.string)) return Value::from_bool(true);
        }
        return Value::from_bool(false);
      }
      fail(name + "() argument must be a string or a tuple of strings");
    });
  }
  if (name == "split") {
    return method([s](const CallArgs& args, Scope&) {
      return split_string(s, arg_or(args, 0, "sep", Value::none()), arg_or(args, 1, "maxsplit", Value::from_int(-1)));
    });
  }
  if (name == "replace") {
    return method([s](const CallArgs& args, Scope&) {
      if (args.positional.size() < 2) fail("replace() needs two arguments");
      const Value& old_text = args.positional[0];
      const Value& new_text = args.positional[1];
      if (old_text.type != ValueType::String || new_text.type != ValueType::String) {
        fail("replace() arguments must be strings");
      }
      const Value count = arg_or(args, 2, "count", Value::none());
      if (count.type != ValueType::Integer && count.type != ValueType::None) {
        fail("replace() count must be an integer or none");
      }
      return Value::from_string(
          replace_string(s, old_text.string, new_text.string, count.type == ValueType::Integer ? count.integer : -1));
    });
  }
  return Value::undefined();
}

// ---- lists and dicts ----

bool numeric_like(const Value& v) { return v.is_number() || v.type == ValueType::Boolean; }
double numeric_value(const Value& v) { return v.type == ValueType::Boolean ? (v.boolean ? 1 : 0) : v.as_double(); }

// The ordering used by sort and dictsort: numbers (and booleans) together, strings with each
// other; anything else cannot be compared.
int compare_values(const Value& a, const Value& b, bool case_sensitive) {
  if (a.type == ValueType::None && b.type == ValueType::None) return 0;
  if (a.type == ValueType::Undefined && b.type == ValueType::Undefined) return 0;
  if (numeric_like(a) && numeric_like(b)) {
    const double x = numeric_value(a), y = numeric_value(b);
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.type == ValueType::String && b.type == ValueType::String) {
    const std::string x = case_sensitive ? a.string : to_lower(a.string);
    const std::string y = case_sensitive ? b.string : to_lower(b.string);
    return x < y ? -1 : x > y ? 1 : 0;
  }
  fail(std::string("cannot compare ") + type_name(a.type) + " with " + type_name(b.type));
}

Value items_of(const Object& obj) {
  Array items;
  for (const auto& entry : obj.entries) {
    items.push_back(Value::from_array({Value::from_string(entry.first), entry.second}));
  }
  return Value::from_array(std::move(items));
}

Value dict_method(const Value& dict, const std::string& name) {
  std::shared_ptr<Object> obj = dict.object;
  auto method = [](auto body) { return Value::from_function(body); };
  if (name == "get") {
    return method([obj](const CallArgs& args, Scope&) {
      const Value key = arg_or(args, 0, nullptr, Value::undefined());
      if (key.type != ValueType::String) fail(std::string("dict.get() key must be a string, got ") + type_name(key.type));
      if (const Value* found = obj->find(key.string)) return *found;
      return arg_or(args, 1, nullptr, Value::none());
    });
  }
  if (name == "items") return method([obj](const CallArgs&, Scope&) { return items_of(*obj); });
  if (name == "keys") {
    return method([obj](const CallArgs&, Scope&) {
      Array keys;
      for (const auto& entry : obj->entries) keys.push_back(Value::from_string(entry.first));
      return Value::from_array(std::move(keys));
    });
  }
  if (name == "values") {
    return method([obj](const CallArgs&, Scope&) {
      Array values;
      for (const auto& entry : obj->entries) values.push_back(entry.second);
      return Value::from_array(std::move(values));
    });
  }
  if (name == "dictsort") {
    return method([obj](const CallArgs& args, Scope&) {
      const Value case_sensitive = arg_or(args, 0, "case_sensitive", Value::from_bool(false));
      const Value by = arg_or(args, 1, "by", Value::from_string("key"));
      const Value reverse = arg_or(args, 2, "reverse", Value::from_bool(false));
      if (case_sensitive.type != ValueType::Boolean || reverse.type != ValueType::Boolean) {
        fail("dictsort(): case_sensitive and reverse must be booleans");
      }
      if (by.type != ValueType::String || (by.string != "key" && by.string != "value")) {
        fail("dictsort(): by must be 'key' or 'value'");
      }
      Array items = *items_of(*obj).array;
      const size_t index = by.string == "key" ? 0 : 1;
      std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) {
        const int c = compare_values((*a.array)[index], (*b.array)[index], case_sensitive.boolean);
        return reverse.boolean ? c > 0 : c < 0;
      });
      return Value::from_array(std::move(items));
    });
  }
  return Value::undefined();
}

// "a.b.0" into dicts and lists (sort(attribute=...), map(attribute=...)).
Value attribute_path(const Value& item, const std::string& path) {
  Value value = item;
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    const std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (value.type == ValueType::Object || value.type == ValueType::Namespace) {
      const Value* found = value.object->find(part);
      value = found != nullptr ? *found : Value::undefined();
    } else if (value.type == ValueType::Array) {
      int64_t index = 0;
      if (!parse_int_prefix(part, index) || index < 0 || index >= static_cast<int64_t>(value.array->size())) {
        return Value::undefined();
      }
      value = (*value.array)[static_cast<size_t>(index)];
    } else {
      return Value::undefined();
    }
    if (dot == std::string::npos) return value;
    start = dot + 1;
  }
}

// JavaScript's Array.join on the items' plain values (none and undefined join as "").
std::string join_values(const Array& items, const std::string& separator) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += separator;
    const Value& item = items[i];
    if (item.type != ValueType::None && item.type != ValueType::Undefined) out += to_js_string(item);
  }
  return out;
}

Value json_filter(const Value& operand, const CallArgs& args) {
  JsonOptions options;
  const Value indent = arg_or(args, SIZE_MAX, "indent", Value::none());
  if (indent.type == ValueType::Integer) {
    options.indent = static_cast<int>(indent.integer);
  } else if (indent.type != ValueType::None) {
    fail("tojson(): indent must be an integer");
  }
  const Value ensure_ascii = arg_or(args, SIZE_MAX, "ensure_ascii", Value::from_bool(false));
  const Value sort_keys = arg_or(args, SIZE_MAX, "sort_keys", Value::from_bool(false));
  if (ensure_ascii.type != ValueType::Boolean || sort_keys.type != ValueType::Boolean) {
    fail("tojson(): ensure_ascii and sort_keys must be booleans");
  }
  options.ensure_ascii = ensure_ascii.boolean;
  options.sort_keys = sort_keys.boolean;
  const Value separators = arg_or(args, SIZE_MAX, "separators", Value::none());
  if (separators.type == ValueType::Array) {
    if (separators.array->size() != 2 || (*separators.array)[0].type != ValueType::String ||
        (*separators.array)[1].type != ValueType::String) {
      fail("tojson(): separators must be a pair of strings");
    }
    options.has_separators = true;
    options.item_separator = (*separators.array)[0].string;
    options.key_separator = (*separators.array)[1].string;
  } else if (separators.type != ValueType::None) {
    fail("tojson(): separators must be a pair of strings");
  }
  return Value::from_string(to_json(operand, options));
}

[[noreturn]] void unknown_filter(const std::string& name, const Value& operand) {
  fail("unknown filter '" + name + "' for a " + type_name(operand.type) + " value");
}

Value sort_list(const Array& items, const CallArgs& args) {
  const Value reverse = arg_or(args, 0, "reverse", Value::from_bool(false));
  const Value case_sensitive = arg_or(args, 1, "case_sensitive", Value::from_bool(false));
  const Value attribute = arg_or(args, 2, "attribute", Value::none());
  if (reverse.type != ValueType::Boolean || case_sensitive.type != ValueType::Boolean) {
    fail("sort(): reverse and case_sensitive must be booleans");
  }
  const auto key = [&](const Value& item) {
    if (attribute.type == ValueType::None) return item;
    if (attribute.type == ValueType::Integer) return attribute_path(item, std::to_string(attribute.integer));
    if (attribute.type == ValueType::String) return attribute_path(item, attribute.string);
    fail("sort(): attribute must be a string, an integer or none");
  };
  Array sorted = items;
  std::stable_sort(sorted.begin(), sorted.end(), [&](const Value& a, const Value& b) {
    const int c = compare_values(key(a), key(b), case_sensitive.boolean);
    return reverse.boolean ? c > 0 : c < 0;
  });
  return Value::from_array(std::move(sorted));
}

Value filter_list(const Value& operand, const std::string& name, bool called, const CallArgs& args) {
  const Array& items = *operand.array;
  if (!called) {
    if (name == "list") return operand;
    if (name == "first") return items.empty() ? Value::undefined() : items.front();
    if (name == "last") return items.empty() ? Value::undefined() : items.back();
    if (name == "length" || name == "count") return Value::from_int(static_cast<int64_t>(items.size()));
    if (name == "reverse") return Value::from_array(Array(items.rbegin(), items.rend()));
    if (name == "sort") return sort_list(items, args);
    if (name == "join") return Value::from_string(join_values(items, ""));
    if (name == "string") return Value::from_string(to_json(operand, JsonOptions{}, false));
    if (name == "unique") {
      Array out;
      for (const Value& item : items) {
        const bool seen = std::any_of(out.begin(), out.end(), [&](const Value& o) { return strict_equals(o, item); });
        if (!seen) out.push_back(item);
      }
      return Value::from_array(std::move(out));
    }
    unknown_filter(name, operand);
  }
  if (name == "sort") return sort_list(items, args);
  if (name == "selectattr" || name == "rejectattr") {
    const bool select = name == "selectattr";
    const Value attribute = arg_or(args, 0, nullptr, Value::undefined());
    const Value test = arg_or(args, 1, nullptr, Value::undefined());
    if (attribute.type != ValueType::String || (test.type != ValueType::Undefined && test.type != ValueType::String)) {
      fail(name + "() arguments must be strings");
    }
    Array out;
    for (const Value& item : items) {
      if (item.type != ValueType::Object && item.type != ValueType::Namespace) {
        fail(name + "() can only be applied to a list of dicts");
      }
      const Value* field = item.object->find(attribute.string);
      bool result = false;
      if (field != nullptr) result = test.type == ValueType::String ? apply_test(*field, test.string) : truthy(*field);
      if (result == select) out.push_back(item);
    }
    return Value::from_array(std::move(out));
  }
  if (name == "map") {
    const Value* attribute = args.keyword("attribute");
    if (attribute == nullptr) fail("map() is supported only with attribute=...");
    if (attribute->type != ValueType::String) fail("map(): attribute must be a string");
    const Value* fallback = args.keyword("default");
    Array out;
    for (const Value& item : items) {
      if (item.type != ValueType::Object && item.type != ValueType::Namespace) fail("map(): items must be dicts");
      Value v = attribute_path(item, attribute->string);
      if (v.type == ValueType::Undefined && fallback != nullptr) v = *fallback;
      out.push_back(v);
    }
    return Value::from_array(std::move(out));
  }
  unknown_filter(name, operand);
}

Value filter_string(const Value& operand, const std::string& name, bool called, const CallArgs& args) {
  const std::string& s = operand.string;
  if (!called) {
    if (name == "length" || name == "count") return Value::from_int(utf16_length(s));
    if (name == "upper") return Value::from_string(to_upper(s));
    if (name == "lower") return Value::from_string(to_lower(s));
    if (name == "title") return Value::from_string(title_case(s));
    if (name == "capitalize") return Value::from_string(capitalize(s));
    if (name == "trim") return Value::from_string(js_trim(s));
    if (name == "indent") return Value::from_string(indent_lines(s, "    ", false, false));
    if (name == "join" || name == "string") return operand;
    if (name == "list") {
      Array chars;
      for (auto& c : code_points(s)) chars.push_back(Value::from_string(std::move(c)));
      return Value::from_array(std::move(chars));
    }
    if (name == "int") {
      int64_t v = 0;
      return Value::from_int(parse_int_prefix(s, v) ? v : 0);
    }
    if (name == "float") {
      double v = 0;
      return Value::from_float(parse_float_prefix(s, v) ? v : 0.0);
    }
    unknown_filter(name, operand);
  }
  if (name == "indent") {
    const Value width = arg_or(args, 0, "width", Value::from_int(4));
    if (width.type != ValueType::Integer) fail("indent(): width must be an integer");
    const Value first = arg_or(args, 1, "first", Value::from_bool(false));
    const Value blank = arg_or(args, 2, "blank", Value::from_bool(false));
    return Value::from_string(
        indent_lines(s, std::string(static_cast<size_t>(std::max<int64_t>(width.integer, 0)), ' '), truthy(first),
                     truthy(blank)));
  }
  if (name == "replace") {
    CallArgs call = args;
    Scope unused;
    return (*string_method(s, "replace").function)(call, unused);
  }
  unknown_filter(name, operand);
}

}  // namespace

Value get_member(const Value& object, const Value& property) {
  switch (object.type) {
    case ValueType::Object:
    case ValueType::Namespace: {
      if (property.type != ValueType::String) {
        fail(std::string("a dict key must be a string, got ") + type_name(property.type));
      }
      if (const Value* found = object.object->find(property.string)) return *found;
      return object.type == ValueType::Object ? dict_method(object, property.string) : Value::undefined();
    }
    case ValueType::Array:
    case ValueType::String: {
      if (property.type == ValueType::Integer) {
        if (object.type == ValueType::Array) {
          const int64_t size = static_cast<int64_t>(object.array->size());
          const int64_t index = property.integer < 0 ? size + property.integer : property.integer;
          return index >= 0 && index < size ? (*object.array)[static_cast<size_t>(index)] : Value::undefined();
        }
        const std::vector<std::string> chars = code_points(object.string);
        const int64_t size = static_cast<int64_t>(chars.size());
        const int64_t index = property.integer < 0 ? size + property.integer : property.integer;
        return index >= 0 && index < size ? Value::from_string(chars[static_cast<size_t>(index)]) : Value::undefined();
      }
      if (property.type == ValueType::String) {
        if (object.type == ValueType::String) return string_method(object.string, property.string);
        if (property.string == "length") return Value::from_int(static_cast<int64_t>(object.array->size()));
        return Value::undefined();
      }
      fail(std::string("a list or string index must be an integer, got ") + type_name(property.type));
    }
    default:
      if (property.type != ValueType::String) {
        fail(std::string("cannot index a ") + type_name(object.type) + " value with a " + type_name(property.type));
      }
      return Value::undefined();
  }
}

Value slice_value(const Value& object, const Value& start_value, const Value& stop_value, const Value& step_value) {
  if (object.type != ValueType::Array && object.type != ValueType::String) {
    fail(std::string("cannot slice a ") + type_name(object.type) + " value");
  }
  for (const Value* bound : {&start_value, &stop_value, &step_value}) {
    if (bound->type != ValueType::Integer && bound->type != ValueType::Undefined) {
      fail("slice bounds must be integers");
    }
  }
  std::vector<std::string> chars;
  if (object.type == ValueType::String) chars = code_points(object.string);
  const int64_t length = object.type == ValueType::Array ? static_cast<int64_t>(object.array->size())
                                                          : static_cast<int64_t>(chars.size());
  const int64_t step = step_value.type == ValueType::Integer ? step_value.integer : 1;
  if (step == 0) fail("slice step cannot be zero");
  int64_t start = 0, stop = 0;
  if (step > 0) {
    start = start_value.type == ValueType::Integer ? start_value.integer : 0;
    stop = stop_value.type == ValueType::Integer ? stop_value.integer : length;
    start = start < 0 ? std::max<int64_t>(length + start, 0) : std::min(start, length);
    stop = stop < 0 ? std::max<int64_t>(length + stop, 0) : std::min(stop, length);
  } else {
    start = start_value.type == ValueType::Integer ? start_value.integer : length - 1;
    stop = stop_value.type == ValueType::Integer ? stop_value.integer : -1;
    start = start < 0 ? std::max<int64_t>(length + start, -1) : std::min(start, length - 1);
    stop = stop < -1 ? std::max<int64_t>(length + stop, -1) : std::min(stop, length - 1);
  }
  const int64_t direction = step > 0 ? 1 : -1;
  if (object.type == ValueType::Array) {
    Array out;
    for (int64_t i = start; direction * i < direction * stop; i += step) out.push_back((*object.array)[static_cast<size_t>(i)]);
    return Value::from_array(std::move(out));
  }
  std::string out;
  for (int64_t i = start; direction * i < direction * stop; i += step) out += chars[static_cast<size_t>(i)];
  return Value::from_string(std::move(out));
}

Value apply_filter(const Value& operand, const std::string& name, bool called, const CallArgs& args) {
  if (name == "safe") return operand;
  if (name == "tojson") return called ? json_filter(operand, args) : Value::from_string(to_json(operand, JsonOptions{}));
  // `default` without (...) means default('') as in Jinja.
  if (name == "default") {
    const Value fallback = arg_or(args, 0, "default_value", Value::from_string(""));
    const Value boolean = arg_or(args, 1, "boolean", Value::from_bool(false));
    if (boolean.type != ValueType::Boolean) fail("default(): the boolean flag must be a boolean");
    if (operand.type == ValueType::Undefined || (boolean.boolean && !truthy(operand))) return fallback;
    return operand;
  }
  if (called) {
    if (name == "join") {
      const Value separator = arg_or(args, 0, "separator", Value::from_string(""));
      if (separator.type != ValueType::String) fail("join(): separator must be a string");
      if (operand.type == ValueType::String) {
        std::string out;
        const std::vector<std::string> chars = code_points(operand.string);
        for (size_t i = 0; i < chars.size(); ++i) out += (i > 0 ? separator.string : "") + chars[i];
        return Value::from_string(out);
      }
      if (operand.type == ValueType::Array) return Value::from_string(join_values(*operand.array, separator.string));
      fail(std::string("cannot apply filter 'join' to a ") + type_name(operand.type) + " value");
    }
    if (name == "int" || name == "float") {
      const bool integer = name == "int";
      const Value fallback = arg_or(args, 0, "default", integer ? Value::from_int(0) : Value::from_float(0.0));
      if (operand.type == ValueType::String) {
        if (integer) {
          int64_t v = 0;
          return parse_int_prefix(operand.string, v) ? Value::from_int(v) : fallback;
        }
        double v = 0;
        return parse_float_prefix(operand.string, v) ? Value::from_float(v) : fallback;
      }
      if (operand.is_number()) return operand;
      if (operand.type == ValueType::Boolean) {
        return integer ? Value::from_int(operand.boolean ? 1 : 0) : Value::from_float(operand.boolean ? 1.0 : 0.0);
      }
      fail("cannot apply filter '" + name + "' to a " + type_name(operand.type) + " value");
    }
  }
  switch (operand.type) {
    case ValueType::Array: return filter_list(operand, name, called, args);
    case ValueType::String: return filter_string(operand, name, called, args);
    case ValueType::Integer:
    case ValueType::Float:
      if (!called) {
        const bool is_int = operand.type == ValueType::Integer;
        if (name == "abs") {
          return is_int ? Value::from_int(operand.integer < 0 ? -operand.integer : operand.integer)
                        : Value::from_float(std::fabs(operand.number));
        }
        if (name == "int") return is_int ? operand : Value::from_int(static_cast<int64_t>(std::floor(operand.number)));
        if (name == "float") return Value::from_float(operand.as_double());
        if (name == "string") return Value::from_string(to_output(operand));
      }
      unknown_filter(name, operand);
    case ValueType::Object: {
      if (!called && name == "items") return items_of(*operand.object);
      if (!called && name == "length") return Value::from_int(static_cast<int64_t>(operand.object->entries.size()));
      const Value method = dict_method(operand, name);
      if (method.type != ValueType::Function) unknown_filter(name, operand);
      Scope unused;
      return (*method.function)(args, unused);
    }
    case ValueType::Boolean:
      if (!called) {
        if (name == "bool") return operand;
        if (name == "int") return Value::from_int(operand.boolean ? 1 : 0);
        if (name == "float") return Value::from_float(operand.boolean ? 1.0 : 0.0);
        if (name == "string") return Value::from_string(operand.boolean ? "true" : "false");
      }
      unknown_filter(name, operand);
    default:
      fail("cannot apply filter '" + name + "' to " + (operand.type == ValueType::Undefined ? "an undefined" : "a " + std::string(type_name(operand.type))) + " value");
  }
}

bool apply_test(const Value& v, const std::string& name) {
  if (name == "defined") return v.type != ValueType::Undefined;
  if (name == "undefined") return v.type == ValueType::Undefined;
  if (name == "none") return v.type == ValueType::None;
  if (name == "boolean") return v.type == ValueType::Boolean;
  if (name == "true") return v.type == ValueType::Boolean && v.boolean;
  if (name == "false") return v.type == ValueType::Boolean && !v.boolean;
  if (name == "string") return v.type == ValueType::String;
  if (name == "number") return v.is_number();
  if (name == "integer") return v.type == ValueType::Integer;
  if (name == "float") return v.type == ValueType::Float;
  if (name == "mapping") return v.type == ValueType::Object;
  if (name == "iterable") return v.type == ValueType::Array || v.type == ValueType::String;
  if (name == "sequence") return v.type == ValueType::Array || v.type == ValueType::Object || v.type == ValueType::String;
  if (name == "callable") return v.type == ValueType::Function;
  if (name == "lower") return v.type == ValueType::String && v.string == to_lower(v.string);
  if (name == "upper") return v.type == ValueType::String && v.string == to_upper(v.string);
  if (name == "odd" || name == "even") {
    if (v.type != ValueType::Integer) fail("test '" + name + "' needs an integer, got a " + type_name(v.type));
    return (v.integer % 2 != 0) == (name == "odd");
  }
  fail("unknown test '" + name + "'");
}

void install_globals(Scope& scope) {
  scope.set("true", Value::from_bool(true));
  scope.set("false", Value::from_bool(false));
  scope.set("none", Value::none());
  scope.set("True", Value::from_bool(true));
  scope.set("False", Value::from_bool(false));
  scope.set("None", Value::none());
  scope.set("raise_exception", Value::from_function([](const CallArgs& args, Scope&) -> Value {
    throw RenderError(args.positional.empty() ? "undefined" : to_js_string(args.positional[0]), true);
  }));
  scope.set("namespace", Value::from_function([](const CallArgs& args, Scope&) {
    if (args.positional.size() > 1) fail("namespace() takes at most one positional argument");
    Object entries;
    if (args.positional.size() == 1) {
      const Value& source = args.positional[0];
      if (source.type == ValueType::Object) {
        entries = *source.object;
      } else if (source.type == ValueType::Array) {
        for (const Value& pair : *source.array) {
          if (pair.type != ValueType::Array || pair.array->size() != 2 || (*pair.array)[0].type != ValueType::String) {
            fail("namespace() expects a dict or a list of [key, value] pairs");
          }
          entries.set((*pair.array)[0].string, (*pair.array)[1]);
        }
      } else {
        fail("namespace() expects a dict or a list of [key, value] pairs");
      }
    }
    for (const auto& kw : args.keywords) entries.set(kw.first, kw.second);
    return Value::new_namespace(std::move(entries));
  }));
  scope.set("range", Value::from_function([](const CallArgs& args, Scope&) {
    std::vector<int64_t> bounds;
    for (const Value& v : args.positional) {
      if (v.type != ValueType::Integer) fail("range() arguments must be integers");
      bounds.push_back(v.integer);
    }
    if (bounds.empty() || bounds.size() > 3) fail("range() takes 1 to 3 arguments");
    const int64_t start = bounds.size() == 1 ? 0 : bounds[0];
    const int64_t stop = bounds.size() == 1 ? bounds[0] : bounds[1];
    const int64_t step = bounds.size() == 3 ? bounds[2] : 1;
    if (step == 0) fail("range() step must not be zero");
    // A chat template loops over a conversation: more than this is a runaway, not a prompt.
    constexpr int64_t kMaxItems = 1000000;
    const double count = (static_cast<double>(stop) - static_cast<double>(start)) / step;
    if (count > kMaxItems) fail("range() of more than " + std::to_string(kMaxItems) + " items");
    Array out;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) out.push_back(Value::from_int(i));
    return Value::from_array(std::move(out));
  }));
  scope.set("strftime_now", Value::from_function([](const CallArgs& args, Scope&) {
    if (args.positional.empty() || args.positional[0].type != ValueType::String) {
      fail("strftime_now() needs a format string");
    }
    static const char* const kMonths[] = {"January", "February", "March",     "April",   "May",      "June",
                                          "July",    "August",   "September", "October", "November", "December"};
    const std::time_t now = std::time(nullptr);
    std::tm local{};
    localtime_r(&now, &local);
    const auto pad2 = [](int n) { return (n < 10 ? "0" : "") + std::to_string(n); };
    const std::string& format = args.positional[0].string;
    std::string out;
    for (size_t i = 0; i < format.size(); ++i) {
      if (format[i] != '%' || i + 1 >= format.size()) {
        out += format[i];
        continue;
      }
      const char c = format[++i];
      switch (c) {
        case 'Y': out += std::to_string(local.tm_year + 1900); break;
        case 'm': out += pad2(local.tm_mon + 1); break;
        case 'd': out += pad2(local.tm_mday); break;
        case 'b': out += std::string(kMonths[local.tm_mon]).substr(0, 3); break;
        case 'B': out += kMonths[local.tm_mon]; break;
        case 'H': out += pad2(local.tm_hour); break;
        case 'M': out += pad2(local.tm_min); break;
        case '%': out += '%'; break;
        default: out += '%'; out += c;
      }
    }
    return Value::from_string(out);
  }));
}

}  // namespace moex::serve::jinja
