#include "serve/jinja_value.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "serve/jinja_unicode.h"

namespace moex::serve::jinja {

const Value* Object::find(const std::string& key) const {
  for (const auto& entry : entries) {
    if (entry.first == key) return &entry.second;
  }
  return nullptr;
}

void Object::set(const std::string& key, Value value) {
  for (auto& entry : entries) {
    if (entry.first == key) {
      entry.second = std::move(value);
      return;
    }
  }
  entries.emplace_back(key, std::move(value));
}

const Value* CallArgs::keyword(const std::string& name) const {
  for (const auto& entry : keywords) {
    if (entry.first == name) return &entry.second;
  }
  return nullptr;
}

Value Value::none() {
  Value v;
  v.type = ValueType::None;
  return v;
}
Value Value::from_bool(bool b) {
  Value v;
  v.type = ValueType::Boolean;
  v.boolean = b;
  return v;
}
Value Value::from_int(int64_t i) {
  Value v;
  v.type = ValueType::Integer;
  v.integer = i;
  return v;
}
Value Value::from_float(double d) {
  Value v;
  v.type = ValueType::Float;
  v.number = d;
  return v;
}
Value Value::from_string(std::string s) {
  Value v;
  v.type = ValueType::String;
  v.string = std::move(s);
  return v;
}
Value Value::from_array(Array items) {
  Value v;
  v.type = ValueType::Array;
  v.array = std::make_shared<Array>(std::move(items));
  return v;
}
Value Value::from_object(Object obj) {
  Value v;
  v.type = ValueType::Object;
  v.object = std::make_shared<Object>(std::move(obj));
  return v;
}
Value Value::new_namespace(Object obj) {
  Value v = from_object(std::move(obj));
  v.type = ValueType::Namespace;
  return v;
}
Value Value::from_function(Function fn) {
  Value v;
  v.type = ValueType::Function;
  v.function = std::make_shared<Function>(std::move(fn));
  return v;
}

namespace {

// JavaScript orders an object's integer-like keys ("0" .. "4294967294") first, ascending.
bool is_array_index(const std::string& key, uint64_t& index) {
  if (key.empty() || key.size() > 10 || (key.size() > 1 && key[0] == '0')) return false;
  index = 0;
  for (char c : key) {
    if (c < '0' || c > '9') return false;
    index = index * 10 + static_cast<uint64_t>(c - '0');
  }
  return index < 4294967295ULL;
}

}  // namespace

Value Value::from_json(const nlohmann::ordered_json& json) {
  switch (json.type()) {
    case nlohmann::ordered_json::value_t::null:
      return none();
    case nlohmann::ordered_json::value_t::boolean:
      return from_bool(json.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer:
      return from_int(json.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      const uint64_t u = json.get<uint64_t>();
      if (u <= static_cast<uint64_t>(INT64_MAX)) return from_int(static_cast<int64_t>(u));
      return from_float(static_cast<double>(u));
    }
    case nlohmann::ordered_json::value_t::number_float: {
      const double d = json.get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.2e18) {
        return from_int(static_cast<int64_t>(d));
      }
      return from_float(d);
    }
    case nlohmann::ordered_json::value_t::string:
      return from_string(json.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      Array items;
      items.reserve(json.size());
      for (const auto& item : json) items.push_back(from_json(item));
      return from_array(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      std::vector<std::pair<uint64_t, std::string>> index_keys;
      std::vector<std::string> other_keys;
      for (auto it = json.begin(); it != json.end(); ++it) {
        uint64_t index = 0;
        if (is_array_index(it.key(), index)) {
          index_keys.emplace_back(index, it.key());
        } else {
          other_keys.push_back(it.key());
        }
      }
      std::sort(index_keys.begin(), index_keys.end());
      Object obj;
      for (const auto& key : index_keys) obj.entries.emplace_back(key.second, from_json(json.at(key.second)));
      for (const auto& key : other_keys) obj.entries.emplace_back(key, from_json(json.at(key)));
      return from_object(std::move(obj));
    }
    default:
      return undefined();
  }
}

const char* type_name(ValueType type) {
  switch (type) {
    case ValueType::Undefined: return "undefined";
    case ValueType::None: return "none";
    case ValueType::Boolean: return "boolean";
    case ValueType::Integer: return "integer";
    case ValueType::Float: return "float";
    case ValueType::String: return "string";
    case ValueType::Array: return "list";
    case ValueType::Object: return "dict";
    case ValueType::Namespace: return "namespace";
    case ValueType::Function: return "function";
  }
  return "value";
}

bool truthy(const Value& v) {
  switch (v.type) {
    case ValueType::Undefined:
    case ValueType::None: return false;
    case ValueType::Boolean: return v.boolean;
    case ValueType::Integer: return v.integer != 0;
    case ValueType::Float: return v.number != 0 && !std::isnan(v.number);
    case ValueType::String: return !v.string.empty();
    case ValueType::Array: return !v.array->empty();
    case ValueType::Object: return !v.object->entries.empty();
    case ValueType::Namespace:  // a JavaScript Map object: always true
    case ValueType::Function: return true;
  }
  return false;
}

std::string js_number_to_string(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
  if (d == 0) return "0";
  const bool negative = d < 0;
  const double magnitude = std::fabs(d);
  // Shortest digit string that reads back as the same double.
  char buf[64];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*e", precision - 1, magnitude);
    if (std::strtod(buf, nullptr) == magnitude) break;
  }
  std::string mantissa(buf, std::strchr(buf, 'e'));
  const int exponent = std::atoi(std::strchr(buf, 'e') + 1);
  std::string digits;
  for (char c : mantissa) {
    if (c != '.') digits += c;
  }
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  const int k = static_cast<int>(digits.size());
  const int n = exponent + 1;  // position of the decimal point
  std::string out;
  if (k <= n && n <= 21) {
    out = digits + std::string(n - k, '0');
  } else if (0 < n && n <= 21) {
    out = digits.substr(0, n) + "." + digits.substr(n);
  } else if (-6 < n && n <= 0) {
    out = "0." + std::string(-n, '0') + digits;
  } else {
    out = digits.substr(0, 1);
    if (k > 1) out += "." + digits.substr(1);
    out += (n - 1 >= 0 ? "e+" : "e-") + std::to_string(std::abs(n - 1));
  }
  return negative ? "-" + out : out;
}

std::string to_output(const Value& v) {
  switch (v.type) {
    case ValueType::Undefined: return "undefined";
    case ValueType::None: return "null";
    case ValueType::Boolean: return v.boolean ? "true" : "false";
    case ValueType::Integer: return std::to_string(v.integer);
    case ValueType::Float: {
      if (v.number == 0 && std::signbit(v.number)) return "-0.0";
      if (std::isfinite(v.number) && v.number == std::floor(v.number) && std::fabs(v.number) < 1e21) {
        char buf[400];
        std::snprintf(buf, sizeof buf, "%.1f", v.number);
        return buf;
      }
      return js_number_to_string(v.number);
    }
    case ValueType::String: return v.string;
    case ValueType::Array:
    case ValueType::Object:
    case ValueType::Namespace: return to_json(v, JsonOptions{}, false);
    case ValueType::Function: return "function";
  }
  return "";
}

std::string to_js_string(const Value& v) {
  switch (v.type) {
    case ValueType::Integer: return std::to_string(v.integer);
    case ValueType::Float: return js_number_to_string(v.number);
    case ValueType::Array: {
      std::string out;
      for (size_t i = 0; i < v.array->size(); ++i) {
        if (i > 0) out += ",";
        out += to_output((*v.array)[i]);
      }
      return out;
    }
    case ValueType::Object:
    case ValueType::Namespace: return "[object Map]";
    default: return to_output(v);
  }
}

namespace {

void append_hex4(std::string& out, uint32_t unit) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "\\u%04x", unit);
  out += buf;
}

// JSON.stringify of a string; with ensure_ascii every code unit from U+007F up is escaped.
std::string json_quote(const std::string& s, bool ensure_ascii) {
  std::string out = "\"";
  for (size_t pos = 0; pos < s.size();) {
    uint32_t cp = 0;
    const size_t length = decode_utf8(s, pos, cp);
    switch (cp) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (cp < 0x20) {
          append_hex4(out, cp);
        } else if (ensure_ascii && cp >= 0x7F && !(length == 1 && cp >= 0x80)) {
          if (cp >= 0x10000) {
            append_hex4(out, 0xD800 + ((cp - 0x10000) >> 10));
            append_hex4(out, 0xDC00 + ((cp - 0x10000) & 0x3FF));
          } else {
            append_hex4(out, cp);
          }
        } else {
          out.append(s, pos, length);
        }
    }
    pos += length;
  }
  out += "\"";
  return out;
}

}  // namespace

std::string to_json(const Value& v, const JsonOptions& options, bool undefined_as_null, int depth) {
  std::string item_separator = ", ", key_separator = ": ";
  if (options.has_separators) {
    item_separator = options.item_separator;
    key_separator = options.key_separator;
  } else if (options.indent > 0) {
    item_separator = ",";
  }
  switch (v.type) {
    case ValueType::None: return "null";
    case ValueType::Undefined: return undefined_as_null ? "null" : "undefined";
    case ValueType::Boolean: return v.boolean ? "true" : "false";
    case ValueType::Integer: return std::to_string(v.integer);
    case ValueType::Float: return std::isfinite(v.number) ? js_number_to_string(v.number) : "null";
    case ValueType::String: return json_quote(v.string, options.ensure_ascii);
    case ValueType::Function: throw RenderError("cannot convert a function to JSON");
    case ValueType::Array:
    case ValueType::Object:
    case ValueType::Namespace: break;
  }
  const std::string indent_unit(static_cast<size_t>(std::max(options.indent, 0)), ' ');
  std::string base_padding = "\n";
  for (int i = 0; i < depth; ++i) base_padding += indent_unit;
  const std::string child_padding = base_padding + indent_unit;
  const bool indented = options.indent > 0;
  std::vector<std::string> parts;
  if (v.type == ValueType::Array) {
    for (const Value& item : *v.array) parts.push_back(to_json(item, options, undefined_as_null, depth + 1));
    std::string out = "[";
    for (size_t i = 0; i < parts.size(); ++i) {
      if (indented) out += child_padding;
      out += parts[i];
      if (i + 1 < parts.size()) out += item_separator;
    }
    if (indented && !parts.empty()) out += base_padding;
    return out + "]";
  }
  std::vector<const std::pair<std::string, Value>*> entries;
  for (const auto& entry : v.object->entries) entries.push_back(&entry);
  if (options.sort_keys) {
    std::stable_sort(entries.begin(), entries.end(), [](const auto* a, const auto* b) { return a->first < b->first; });
  }
  std::string out = "{";
  for (size_t i = 0; i < entries.size(); ++i) {
    if (indented) out += child_padding;
    out += json_quote(entries[i]->first, options.ensure_ascii) + key_separator +
           to_json(entries[i]->second, options, undefined_as_null, depth + 1);
    if (i + 1 < entries.size()) out += item_separator;
  }
  if (indented && !entries.empty()) out += base_padding;
  return out + "}";
}

namespace {

// JavaScript's ToNumber on a string.
double js_string_to_number(const std::string& s) {
  const std::string t = js_trim(s);
  if (t.empty()) return 0;
  if (t == "Infinity" || t == "+Infinity") return INFINITY;
  if (t == "-Infinity") return -INFINITY;
  if (t.size() > 2 && t[0] == '0' && (t[1] == 'x' || t[1] == 'X' || t[1] == 'o' || t[1] == 'O' || t[1] == 'b' || t[1] == 'B')) {
    const int base = (t[1] == 'x' || t[1] == 'X') ? 16 : (t[1] == 'o' || t[1] == 'O') ? 8 : 2;
    char* end = nullptr;
    const unsigned long long value = std::strtoull(t.c_str() + 2, &end, base);
    return *end == '\0' ? static_cast<double>(value) : NAN;
  }
  for (char c : t) {
    if (!((c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-')) return NAN;
  }
  char* end = nullptr;
  const double value = std::strtod(t.c_str(), &end);
  return *end == '\0' ? value : NAN;
}

bool is_reference(const Value& v) {
  return v.type == ValueType::Array || v.type == ValueType::Object || v.type == ValueType::Namespace ||
         v.type == ValueType::Function;
}

const void* reference_of(const Value& v) {
  if (v.type == ValueType::Array) return v.array.get();
  if (v.type == ValueType::Function) return v.function.get();
  return v.object.get();
}

}  // namespace

bool strict_equals(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) return a.as_double() == b.as_double();
  if (a.type != b.type) return false;
  switch (a.type) {
    case ValueType::Undefined:
    case ValueType::None: return true;
    case ValueType::Boolean: return a.boolean == b.boolean;
    case ValueType::String: return a.string == b.string;
    default: return reference_of(a) == reference_of(b);
  }
}

bool loose_equals(const Value& a, const Value& b) {
  const auto nullish = [](const Value& v) { return v.type == ValueType::None || v.type == ValueType::Undefined; };
  if (nullish(a) || nullish(b)) return nullish(a) && nullish(b);
  if (is_reference(a) && is_reference(b)) return a.type == b.type && reference_of(a) == reference_of(b);
  if (a.type == b.type || (a.is_number() && b.is_number())) return strict_equals(a, b);
  // Mixed types: booleans become numbers, lists and dicts their string form, then strings
  // compared with numbers become numbers.
  if (a.type == ValueType::Boolean) return loose_equals(Value::from_int(a.boolean ? 1 : 0), b);
  if (b.type == ValueType::Boolean) return loose_equals(a, Value::from_int(b.boolean ? 1 : 0));
  if (is_reference(a)) return loose_equals(Value::from_string(to_js_string(a)), b);
  if (is_reference(b)) return loose_equals(a, Value::from_string(to_js_string(b)));
  if (a.is_number() && b.type == ValueType::String) return a.as_double() == js_string_to_number(b.string);
  if (a.type == ValueType::String && b.is_number()) return js_string_to_number(a.string) == b.as_double();
  return false;
}

}  // namespace moex::serve::jinja
