// Strict reading of JSON config files: every field read is marked, and whatever is left unread
// (a mistyped or unknown field) is an error naming the file and the field's path.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"

namespace moex {

// Nesting deeper than this is an error: nlohmann's copy and dump recurse once per level, so a
// file of a million '[' would overflow the stack (serde_json, which writes tokenizer.json,
// stops at 128 as well).
constexpr int kMaxJsonDepth = 128;
// A config file is kilobytes: a far lower bound than other files' (read_file) keeps /dev/zero or
// a runaway pipe cheap to refuse.
constexpr int64_t kMaxConfigBytes = int64_t{64} << 20;

// Parses JSON read from a file or a request. Malformed text, a number too large for a double
// (nlohmann reports those as out_of_range, not parse_error), nesting deeper than max_depth and a
// key given twice in one object are one moex::Error: "<source>: <what>: <details>".
nlohmann::json parse_json(const char* begin, const char* end, const std::string& source,
                          const char* what = "invalid JSON", int max_depth = kMaxJsonDepth);
// Whether JSON text nests at most max_depth levels of arrays and objects (strings skipped; the
// text need not be valid): check it before a parser builds a value too deep to copy.
bool json_nesting_within(const char* begin, const char* end, int max_depth);
inline nlohmann::json parse_json(const std::string& text, const std::string& source,
                                 const char* what = "invalid JSON", int max_depth = kMaxJsonDepth) {
  return parse_json(text.data(), text.data() + text.size(), source, what, max_depth);
}

class JsonReader {
 public:
  // Parses `path`; malformed JSON is an error naming the file, line and column.
  static JsonReader from_file(const std::string& path);
  static JsonReader from_string(const std::string& text, const std::string& source_name);

  bool has(const std::string& key) const;
  // The field's whole subtree as JSON text ("" if absent), accepted as read (e.g. a config section
  // saved verbatim with checkpoints; a section with its own strict reader still checks it).
  std::string get_json_text(const std::string& key, int indent = -1) const;
  // Marks a field as known without reading it (fields other tools write, e.g. HF's
  // "architectures").
  void ignore(const std::string& key) const { shared_->ignored.insert(full(key)); }
  // Typed getters; a wrong type is an error naming file and field ("tiny.json: model.top_k must be
  // an integer").
  int64_t get_int(const std::string& key) const;
  int64_t get_int(const std::string& key, int64_t fallback) const;
  double get_double(const std::string& key) const;
  double get_double(const std::string& key, double fallback) const;
  // `v`, read from `key`, as an int: a value outside int's range is an error, never truncated.
  int to_int(const std::string& key, int64_t v) const;
  // A number stored as float: a value beyond the float range (it would become inf) is an error.
  float get_float(const std::string& key, float fallback) const;
  bool get_bool(const std::string& key, bool fallback) const;
  std::string get_string(const std::string& key) const;
  std::string get_string(const std::string& key, const std::string& fallback) const;
  // One of `choices`; anything else names the field and the allowed values.
  std::string get_choice(const std::string& key, const std::vector<std::string>& choices,
                         const std::string& fallback) const;
  // get_choice over an enum's table of names (EnumName below), as the value.
  template <typename E, size_t N>
  E get_enum(const std::string& key, const std::pair<E, const char*> (&names)[N],
             E fallback) const;
  // An integer or a list of integers; an integer is repeated `count` times.
  std::vector<int64_t> get_int_list(const std::string& key, size_t count, int64_t fallback) const;
  // A list of integers of any length (empty if absent).
  std::vector<int64_t> get_int_array(const std::string& key) const;
  JsonReader child(const std::string& key) const;  // a nested object (an empty one if absent)

  // Throws on the first field of this object (and of children taken from it) that no getter read.
  void finish() const;
  // "file: path.to.field"
  std::string where(const std::string& key) const;
  const std::string& source() const { return shared_->source; }  // the file's name
  const std::string& path() const { return path_; }  // this object's fields' prefix ("" at the top)
  [[noreturn]] void fail(const std::string& key, const std::string& message) const;

 private:
  struct Shared {
    std::string source;
    std::set<std::string> read;     // full paths that were read
    std::set<std::string> asked;    // full paths asked for, given or not (hints for typos)
    std::set<std::string> ignored;  // full paths whose whole subtree is accepted unread
  };
  JsonReader(std::shared_ptr<Shared> shared, std::shared_ptr<const nlohmann::json> root,
             const nlohmann::json* node, std::string path);
  const nlohmann::json* find(const std::string& key) const;
  int64_t as_int(const nlohmann::json& v, const std::string& key, const char* what) const;
  std::string full(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }
  struct UnreadField {
    std::string parent;  // the object's path ("" at the top)
    std::string key;
  };
  void collect_unread(const nlohmann::json& node, const std::string& path,
                      std::vector<UnreadField>* out) const;

  std::shared_ptr<Shared> shared_;
  std::shared_ptr<const nlohmann::json> root_;
  const nlohmann::json* node_ = nullptr;
  std::string path_;
};

// An enum's values with the names config files spell them, so that reading (JsonReader::get_enum)
// and writing (enum_name) share one table: {{Norm::kRMSNorm, "rmsnorm"}, ...}.
template <typename E>
using EnumName = std::pair<E, const char*>;

template <typename E, size_t N>
const char* enum_name(const EnumName<E> (&names)[N], E value) {
  for (const EnumName<E>& n : names)
    if (n.first == value) return n.second;
  MOEX_THROW("enum_name: value ", static_cast<int>(value), " has no name in its table");
}

template <typename E, size_t N>
E JsonReader::get_enum(const std::string& key, const EnumName<E> (&names)[N], E fallback) const {
  std::vector<std::string> choices;
  for (const EnumName<E>& n : names) choices.emplace_back(n.second);
  const std::string chosen = get_choice(key, choices, enum_name(names, fallback));
  for (const EnumName<E>& n : names)
    if (chosen == n.second) return n.first;
  return fallback;  // unreachable: get_choice accepts only the table's names
}

}  // namespace moex
