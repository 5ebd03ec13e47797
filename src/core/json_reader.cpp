#include "core/json_reader.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <unordered_set>
#include <vector>

#include "core/file_util.h"
#include "core/spelling.h"

namespace moex {

namespace {

// The SAX events of a document that parses: records the path of the first key an object repeats.
struct DuplicateKeyFinder : nlohmann::json_sax<nlohmann::json> {
  struct Object {
    std::unordered_set<std::string> keys;
    std::string key;  // the key whose value is being read
  };
  std::vector<Object> objects;
  std::string duplicate;  // "a.b.c", or empty

  bool start_object(std::size_t) override {
    objects.emplace_back();
    return true;
  }
  bool end_object() override {
    objects.pop_back();
    return true;
  }
  bool key(string_t& k) override {
    Object& top = objects.back();
    top.key = k;
    if (top.keys.insert(k).second) return true;
    for (const Object& o : objects) duplicate += (duplicate.empty() ? "" : ".") + o.key;
    return false;  // stops the pass
  }
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_array(std::size_t) override { return true; }
  bool end_array() override { return true; }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
    return false;
  }
};

}  // namespace

namespace {

// The first byte where the nesting passes max_depth, or end.
const char* too_deep_at(const char* begin, const char* end, int max_depth) {
  int depth = 0;
  bool in_string = false;
  for (const char* p = begin; p != end; ++p) {
    const char c = *p;
    if (in_string) {
      if (c == '\\' && p + 1 != end)
        ++p;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return p;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return end;
}

}  // namespace

bool json_nesting_within(const char* begin, const char* end, int max_depth) {
  return too_deep_at(begin, end, max_depth) == end;
}

nlohmann::json parse_json(const char* begin, const char* end, const std::string& source,
                          const char* what, int max_depth) {
  // Depth first, skipping strings, so that the parser never builds a value too deep to copy.
  const char* deep = too_deep_at(begin, end, max_depth);
  if (deep != end)
    MOEX_THROW(source, ": ", what, ": nested more than ", max_depth, " levels deep (at byte ",
               deep - begin, ")");
  nlohmann::json value;
  try {
    value = nlohmann::json::parse(begin, end);
  } catch (const nlohmann::json::exception& e) {
    MOEX_THROW(source, ": ", what, ": ", e.what());
  }
  // nlohmann keeps the last of duplicate keys; a config with one field twice is a mistake (which
  // one did the author mean?). A second, SAX pass tracks each open object's keys: linear, where a
  // parser callback would rescan a container each time one of its objects closes.
  DuplicateKeyFinder finder;
  nlohmann::json::sax_parse(begin, end, &finder);
  if (!finder.duplicate.empty())
    MOEX_THROW(source, ": ", what, ": the key \"", finder.duplicate,
               "\" appears twice in one object");
  return value;
}

namespace {
const nlohmann::json& empty_object() {
  static const nlohmann::json kEmpty = nlohmann::json::object();
  return kEmpty;
}
}  // namespace

JsonReader::JsonReader(std::shared_ptr<Shared> shared, std::shared_ptr<const nlohmann::json> root,
                       const nlohmann::json* node, std::string path)
    : shared_(std::move(shared)), root_(std::move(root)), node_(node), path_(std::move(path)) {}

JsonReader JsonReader::from_string(const std::string& text, const std::string& source_name) {
  auto shared = std::make_shared<Shared>();
  shared->source = source_name;
  auto root = std::make_shared<nlohmann::json>(parse_json(text, source_name));
  MOEX_CHECK(root->is_object(), source_name, ": the top level must be a JSON object");
  const nlohmann::json* node = root.get();
  return JsonReader(shared, root, node, "");
}

JsonReader JsonReader::from_file(const std::string& path) {
  return from_string(read_file(path, kMaxConfigBytes), path);
}

std::string JsonReader::where(const std::string& key) const {
  return shared_->source + ": " + full(key);
}

void JsonReader::fail(const std::string& key, const std::string& message) const {
  MOEX_THROW(where(key), " ", message);
}

const nlohmann::json* JsonReader::find(const std::string& key) const {
  shared_->asked.insert(full(key));
  auto it = node_->find(key);
  if (it == node_->end()) return nullptr;
  // A known field set to null reads as unset (its default, or "is required"), not as unknown.
  shared_->read.insert(full(key));
  return it->is_null() ? nullptr : &*it;
}

bool JsonReader::has(const std::string& key) const {
  shared_->asked.insert(full(key));
  auto it = node_->find(key);
  if (it == node_->end()) return false;
  // A known field set to null reads as unset (find() says why), not as unknown.
  if (it->is_null()) shared_->read.insert(full(key));
  return !it->is_null();
}

// An integer field as int64_t; an unsigned value above INT64_MAX would wrap to a negative one.
int64_t JsonReader::as_int(const nlohmann::json& v, const std::string& key,
                           const char* what) const {
  // A whole number past 2^64 parses as a float: it is an integer, out of range.
  if (v.is_number_float()) {
    const double x = v.get<double>();
    if (std::isfinite(x) && std::floor(x) == x && std::fabs(x) >= 0x1p63)
      fail(key, "is " + v.dump() + ", out of the 64-bit integer range");
  }
  if (!v.is_number_integer()) fail(key, what);
  if (v.is_number_unsigned() &&
      v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    fail(key, "is " + v.dump() + ", out of the 64-bit integer range");
  return v.get<int64_t>();
}

int64_t JsonReader::get_int(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (v == nullptr) fail(key, "is required");
  return as_int(*v, key, "must be an integer");
}

int64_t JsonReader::get_int(const std::string& key, int64_t fallback) const {
  return has(key) ? get_int(key) : fallback;
}

double JsonReader::get_double(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (v == nullptr) fail(key, "is required");
  if (!v->is_number()) fail(key, "must be a number");
  return v->get<double>();
}

double JsonReader::get_double(const std::string& key, double fallback) const {
  return has(key) ? get_double(key) : fallback;
}

int JsonReader::to_int(const std::string& key, int64_t v) const {
  if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max())
    fail(key, "is " + std::to_string(v) + ", out of range");
  return static_cast<int>(v);
}

float JsonReader::get_float(const std::string& key, float fallback) const {
  if (!has(key)) return fallback;
  const double v = get_double(key);
  if (std::fabs(v) > static_cast<double>(std::numeric_limits<float>::max()))
    fail(key, "is " + std::to_string(v) + ", out of the float range");
  return static_cast<float>(v);
}

bool JsonReader::get_bool(const std::string& key, bool fallback) const {
  const nlohmann::json* v = find(key);
  if (v == nullptr) return fallback;
  if (!v->is_boolean()) fail(key, "must be true or false");
  return v->get<bool>();
}

std::string JsonReader::get_string(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (v == nullptr) fail(key, "is required");
  if (!v->is_string()) fail(key, "must be a string");
  return v->get<std::string>();
}

std::string JsonReader::get_string(const std::string& key, const std::string& fallback) const {
  return has(key) ? get_string(key) : fallback;
}

std::string JsonReader::get_choice(const std::string& key, const std::vector<std::string>& choices,
                                   const std::string& fallback) const {
  const std::string value = get_string(key, fallback);
  for (const auto& c : choices)
    if (c == value) return value;
  std::string allowed;
  for (const auto& c : choices) allowed += (allowed.empty() ? "" : ", ") + c;
  fail(key, "is '" + value + "'; expected one of: " + allowed);
}

std::vector<int64_t> JsonReader::get_int_list(const std::string& key, size_t count,
                                              int64_t fallback) const {
  const nlohmann::json* v = find(key);
  if (v == nullptr) return std::vector<int64_t>(count, fallback);
  if (v->is_number_integer())
    return std::vector<int64_t>(count, as_int(*v, key, "must be an integer"));
  if (!v->is_array()) fail(key, "must be an integer or a list of integers");
  if (v->size() != count)
    fail(key, "has " + std::to_string(v->size()) + " entries, expected " + std::to_string(count));
  std::vector<int64_t> out;
  for (const auto& item : *v) out.push_back(as_int(item, key, "must hold integers only"));
  return out;
}

std::string JsonReader::get_json_text(const std::string& key, int indent) const {
  const nlohmann::json* v = find(key);
  if (v == nullptr) return "";
  shared_->ignored.insert(full(key));
  return v->dump(indent);
}

std::vector<int64_t> JsonReader::get_int_array(const std::string& key) const {
  const nlohmann::json* v = find(key);
  std::vector<int64_t> out;
  if (v == nullptr) return out;
  if (!v->is_array()) fail(key, "must be a list of integers");
  for (const auto& item : *v) out.push_back(as_int(item, key, "must hold integers only"));
  return out;
}

JsonReader JsonReader::child(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (v == nullptr) return JsonReader(shared_, root_, &empty_object(), full(key));
  if (!v->is_object()) fail(key, "must be an object");
  return JsonReader(shared_, root_, v, full(key));
}

void JsonReader::collect_unread(const nlohmann::json& node, const std::string& path,
                                std::vector<UnreadField>* out) const {
  for (auto it = node.begin(); it != node.end(); ++it) {
    const std::string p = path.empty() ? it.key() : path + "." + it.key();
    if (it.key().rfind("_comment", 0) == 0) continue;  // "_comment..." keys document a config
    if (shared_->ignored.count(p)) continue;
    if (!shared_->read.count(p)) {
      out->push_back({path, it.key()});
    } else if (it->is_object()) {
      collect_unread(*it, p, out);
    }
  }
}

void JsonReader::finish() const {
  std::vector<UnreadField> unread;
  collect_unread(*node_, path_, &unread);
  if (unread.empty()) return;
  // The hint: the fields asked for beside the unknown one (the same parent), given or not. (Keys
  // may hold dots themselves: the parent is known, not found in the joined path.)
  const UnreadField& field = unread.front();
  const std::string prefix = field.parent.empty() ? "" : field.parent + ".";
  std::vector<std::string> siblings;
  for (const std::string& asked : shared_->asked)
    if (asked.size() > prefix.size() && asked.compare(0, prefix.size(), prefix) == 0)
      siblings.push_back(asked.substr(prefix.size()));
  MOEX_THROW(shared_->source, ": unknown field '", prefix + field.key, "'",
             did_you_mean(field.key, siblings));
}

}  // namespace moex
