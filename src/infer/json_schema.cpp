#include "infer/json_schema.h"

#include <map>
#include <set>

#include "core/error.h"

namespace moex::infer {

using nlohmann::json;

// Walks one schema document. Nodes are made on first use; a $ref is compiled once and later
// references (recursion included) reuse its node.
class SchemaCompiler {
 public:
  SchemaCompiler(const json& document, std::string where, JsonSchema& out)
      : document_(document), where_(std::move(where)), out_(out) {}

  int compile(const json& s, const std::string& path);
  // Flattens every anyOf and $ref into the plain nodes it may be (Node::leaves); run once all
  // the document's nodes exist.
  void finish();

 private:
  [[noreturn]] void fail(const std::string& path, const std::string& what) const {
    throw Error(path + ": " + what);
  }
  int new_node(const std::string& path) {
    if (out_.nodes_.size() >= JsonSchema::kMaxNodes)
      fail(path, "the schema has more than " + std::to_string(JsonSchema::kMaxNodes) +
                     " parts, which is not supported");
    out_.nodes_.emplace_back();
    paths_.resize(out_.nodes_.size());
    paths_.back() = path;
    return static_cast<int>(out_.nodes_.size()) - 1;
  }
  int reference(const std::string& ref, const std::string& path);
  uint8_t kinds(const json& s, const std::string& path) const;
  int64_t count(const json& s, const char* key, const std::string& path) const;
  void object_keywords(const json& s, const std::string& path, int index);
  void literals(const json& s, const std::string& path, int index);

  const json& document_;
  std::string where_;
  JsonSchema& out_;
  std::map<std::string, int> refs_;  // "#/$defs/X" -> its node
  std::vector<std::string> paths_;   // each node's path, for errors
  int depth_ = 0;                    // schemas being compiled, one inside the other
};

namespace {

// Keywords that only describe: accepted, not enforced.
const std::set<std::string> kAnnotations = {
    "title",    "description", "default",    "examples", "format",    "$schema",       "$id",
    "$comment", "strict",      "deprecated", "readOnly", "writeOnly", "discriminator", "name"};
// Keywords that constrain values in ways not built: refused, so no answer silently breaks them.
const std::set<std::string> kRefused = {"pattern",
                                        "minimum",
                                        "maximum",
                                        "exclusiveMinimum",
                                        "exclusiveMaximum",
                                        "multipleOf",
                                        "patternProperties",
                                        "propertyNames",
                                        "minProperties",
                                        "maxProperties",
                                        "dependentRequired",
                                        "dependentSchemas",
                                        "dependencies",
                                        "prefixItems",
                                        "contains",
                                        "minContains",
                                        "maxContains",
                                        "uniqueItems",
                                        "unevaluatedProperties",
                                        "unevaluatedItems",
                                        "not",
                                        "if",
                                        "then",
                                        "else",
                                        "$dynamicRef",
                                        "$recursiveRef",
                                        "contentSchema"};

uint8_t kind_bit(const std::string& name) {
  if (name == "object") return JsonSchema::kObject;
  if (name == "array") return JsonSchema::kArray;
  if (name == "string") return JsonSchema::kString;
  if (name == "number") return JsonSchema::kNumber;
  if (name == "integer") return JsonSchema::kInteger;
  if (name == "boolean") return JsonSchema::kBoolean;
  if (name == "null") return JsonSchema::kNull;
  return 0;
}

// Whether a value of JSON type `v` is allowed by `kinds`.
bool allows(uint8_t kinds, const json& v) {
  if (v.is_object()) return kinds & JsonSchema::kObject;
  if (v.is_array()) return kinds & JsonSchema::kArray;
  if (v.is_string()) return kinds & JsonSchema::kString;
  if (v.is_boolean()) return kinds & JsonSchema::kBoolean;
  if (v.is_null()) return kinds & JsonSchema::kNull;
  if (v.is_number_integer() || v.is_number_unsigned())
    return kinds & (JsonSchema::kNumber | JsonSchema::kInteger);
  return kinds & JsonSchema::kNumber;
}

}  // namespace

uint8_t SchemaCompiler::kinds(const json& s, const std::string& path) const {
  if (!s.contains("type")) return JsonSchema::kAnyKind;
  const json& t = s["type"];
  const std::string bad =
      "'type' must be one of object, array, string, number, integer, "
      "boolean, null, or a list of them";
  uint8_t k = 0;
  if (t.is_string()) {
    k = kind_bit(t.get<std::string>());
    if (k == 0) fail(path, bad + ", got " + t.dump());
    return k;
  }
  if (!t.is_array() || t.empty()) fail(path, bad);
  for (const json& name : t) {
    const uint8_t bit = name.is_string() ? kind_bit(name.get<std::string>()) : 0;
    if (bit == 0) fail(path, bad + ", got " + name.dump());
    k |= bit;
  }
  return k;
}

int64_t SchemaCompiler::count(const json& s, const char* key, const std::string& path) const {
  const json& v = s[key];
  if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0))
    fail(path, std::string("'") + key + "' must be a non-negative integer, got " + v.dump());
  if (v.get<uint64_t>() > static_cast<uint64_t>(INT32_MAX))
    fail(path, std::string("'") + key + "' is too large: " + v.dump());
  return v.get<int64_t>();
}

int SchemaCompiler::reference(const std::string& ref, const std::string& path) {
  if (auto it = refs_.find(ref); it != refs_.end()) return it->second;
  if (ref.empty() || ref[0] != '#')
    fail(path, "'$ref' " + json(ref).dump() +
                   " is not supported (only references inside the "
                   "schema: \"#\", \"#/$defs/...\")");
  const json* target = nullptr;
  try {
    const json::json_pointer pointer(ref.substr(1));
    if (document_.contains(pointer)) target = &document_.at(pointer);
  } catch (const json::exception&) {
    fail(path, "'$ref' " + json(ref).dump() + " is not a JSON pointer into the schema");
  }
  if (target == nullptr) fail(path, "'$ref' " + json(ref).dump() + " names nothing in the schema");
  // Reserved before compiling, so that a schema referring to itself finds its node.
  const int index = new_node(path);
  refs_[ref] = index;
  const int compiled = compile(*target, where_ + ref.substr(1));
  out_.nodes_[static_cast<size_t>(index)].alternatives = {compiled};
  return index;
}

void SchemaCompiler::object_keywords(const json& s, const std::string& path, int index) {
  JsonSchema::Node node;  // filled here, then stored (compile() below may grow the table)
  // Declared properties and no additionalProperties: no other keys (as vLLM's and OpenAI's strict
  // structured output read it); no properties at all: any keys.
  node.additional = s.contains("properties") ? -1 : JsonSchema::kAny;
  if (s.contains("properties")) {
    const json& props = s["properties"];
    if (!props.is_object()) fail(path, "'properties' must be an object");
    if (props.size() > JsonSchema::kMaxMembers)
      fail(path, "more than " + std::to_string(JsonSchema::kMaxMembers) +
                     " properties in one object are not supported");
    for (const auto& [name, sub] : props.items()) {
      if (name.size() > JsonSchema::kMaxText)
        fail(path, "a property name longer than " + std::to_string(JsonSchema::kMaxText) +
                       " bytes is not supported");
      for (char c : name)
        if (static_cast<unsigned char>(c) < 0x20)
          fail(path, "a property name with a control character is not supported");
      node.property_names.push_back(name);
      node.property_nodes.push_back(compile(sub, path + ".properties." + name));
    }
  }
  if (s.contains("required")) {
    const json& req = s["required"];
    if (!req.is_array()) fail(path, "'required' must be a list of property names");
    for (const json& name : req) {
      if (!name.is_string()) fail(path, "'required' must be a list of property names");
      size_t i = 0;
      while (i < node.property_names.size() && node.property_names[i] != name) ++i;
      if (i == node.property_names.size())
        fail(path, "'required' names " + name.dump() + ", which is not in 'properties'");
      node.required |= uint64_t{1} << i;
    }
  }
  if (s.contains("additionalProperties")) {
    const json& extra = s["additionalProperties"];
    if (extra.is_boolean())
      node.additional = extra.get<bool>() ? JsonSchema::kAny : -1;
    else
      node.additional = compile(extra, path + ".additionalProperties");
  }
  JsonSchema::Node& stored = out_.nodes_[static_cast<size_t>(index)];
  stored.property_names = std::move(node.property_names);
  stored.property_nodes = std::move(node.property_nodes);
  stored.required = node.required;
  stored.additional = node.additional;
}

void SchemaCompiler::literals(const json& s, const std::string& path, int index) {
  std::vector<json> values;
  if (s.contains("enum")) {
    if (!s["enum"].is_array() || s["enum"].empty()) fail(path, "'enum' must be a non-empty list");
    values.assign(s["enum"].begin(), s["enum"].end());
  }
  if (s.contains("const")) {
    if (!values.empty()) fail(path, "'enum' and 'const' together are not supported");
    values.push_back(s["const"]);
  }
  if (values.empty()) return;
  // The values are the schema: other constraints beside them would have to be checked against
  // each value, which is not built.
  for (const char* key : {"properties", "required", "additionalProperties", "items", "minItems",
                          "maxItems", "minLength", "maxLength"})
    if (s.contains(key))
      fail(path, std::string("'") + key + "' beside 'enum' or 'const' is not supported");
  if (values.size() > JsonSchema::kMaxMembers)
    fail(path, "more than " + std::to_string(JsonSchema::kMaxMembers) +
                   " values in one enum are not supported");
  JsonSchema::Node& node = out_.nodes_[static_cast<size_t>(index)];
  for (const json& v : values) {
    if (!allows(node.kinds, v)) continue;
    node.literals.push_back(v.dump(-1, ' ', false, json::error_handler_t::replace));
    if (node.literals.back().size() > JsonSchema::kMaxText)
      fail(path, "an 'enum' or 'const' value longer than " + std::to_string(JsonSchema::kMaxText) +
                     " bytes is not supported");
  }
  if (node.literals.empty()) fail(path, "no value of 'enum' or 'const' has the schema's 'type'");
}

int SchemaCompiler::compile(const json& s, const std::string& path) {
  struct Nested {
    int& depth;
    ~Nested() { --depth; }
  } nested{++depth_};
  if (depth_ > JsonSchema::kMaxNesting)
    fail(path, "schemas nest deeper than " + std::to_string(JsonSchema::kMaxNesting) +
                   " (references followed included), which is not supported");
  if (s.is_boolean()) {
    if (!s.get<bool>()) fail(path, "the schema false matches no value");
    return JsonSchema::kAny;
  }
  if (!s.is_object()) fail(path, "a schema must be an object or a boolean, got " + s.dump());
  for (const auto& [key, value] : s.items()) {
    if (kRefused.count(key))
      fail(path, "'" + key + "' is not supported by moex's structured output");
    (void)value;
  }
  // Keywords besides annotations and $defs that a combinator or $ref would have to intersect.
  auto other_keywords = [&](const char* combinator) {
    for (const auto& [key, value] : s.items()) {
      (void)value;
      if (key != combinator && !kAnnotations.count(key) && key != "$defs" && key != "definitions")
        fail(path, "'" + key + "' beside '" + combinator +
                       "' is not supported (put it inside each alternative)");
    }
  };
  if (s.contains("$ref")) {
    if (!s["$ref"].is_string()) fail(path, "'$ref' must be a string");
    other_keywords("$ref");
    return reference(s["$ref"].get<std::string>(), path);
  }
  if (s.contains("allOf")) {
    // Pydantic v1 wraps a described reference as allOf: [{$ref}]; a real intersection is not
    // built.
    const json& all = s["allOf"];
    if (!all.is_array() || all.size() != 1)
      fail(path, "'allOf' with more than one schema is not supported");
    other_keywords("allOf");
    return compile(all[0], path + ".allOf[0]");
  }
  const int index = new_node(path);
  for (const char* combinator : {"anyOf", "oneOf"}) {
    if (!s.contains(combinator)) continue;
    other_keywords(combinator);
    const json& list = s[combinator];
    if (!list.is_array() || list.empty())
      fail(path, std::string("'") + combinator + "' must be a non-empty list of schemas");
    if (list.size() > JsonSchema::kMaxMembers)
      fail(path, std::string("more than ") + std::to_string(JsonSchema::kMaxMembers) +
                     " alternatives are not supported");
    std::vector<int> alternatives;
    for (size_t i = 0; i < list.size(); ++i)
      alternatives.push_back(
          compile(list[i], path + "." + combinator + "[" + std::to_string(i) + "]"));
    out_.nodes_[static_cast<size_t>(index)].alternatives = std::move(alternatives);
    return index;
  }
  out_.nodes_[static_cast<size_t>(index)].kinds = kinds(s, path);
  object_keywords(s, path, index);
  if (s.contains("items")) {
    if (s["items"].is_array())
      fail(path, "'items' as a list (a tuple) is not supported; use one schema");
    const int items = compile(s["items"], path + ".items");
    out_.nodes_[static_cast<size_t>(index)].items = items;
  }
  JsonSchema::Node& node = out_.nodes_[static_cast<size_t>(index)];
  if (s.contains("minItems")) node.min_items = count(s, "minItems", path);
  if (s.contains("maxItems")) node.max_items = count(s, "maxItems", path);
  if (s.contains("minLength")) node.min_length = count(s, "minLength", path);
  if (s.contains("maxLength")) node.max_length = count(s, "maxLength", path);
  if (node.max_items >= 0 && node.min_items > node.max_items)
    fail(path, "'minItems' is above 'maxItems'");
  if (node.max_length >= 0 && node.min_length > node.max_length)
    fail(path, "'minLength' is above 'maxLength'");
  literals(s, path, index);
  return index;
}

void SchemaCompiler::finish() {
  for (size_t start = 0; start < out_.nodes_.size(); ++start) {
    if (out_.nodes_[start].alternatives.empty()) continue;
    // Depth first through alternatives, each node once (a cycle adds nothing).
    std::vector<int> leaves, todo = {static_cast<int>(start)};
    std::vector<bool> seen(out_.nodes_.size(), false);
    while (!todo.empty()) {
      const int n = todo.back();
      todo.pop_back();
      if (seen[static_cast<size_t>(n)]) continue;
      seen[static_cast<size_t>(n)] = true;
      const std::vector<int>& alternatives = out_.nodes_[static_cast<size_t>(n)].alternatives;
      if (alternatives.empty()) {
        leaves.push_back(n);
        continue;
      }
      for (auto it = alternatives.rbegin(); it != alternatives.rend(); ++it) todo.push_back(*it);
    }
    const std::string& path = start < paths_.size() ? paths_[start] : where_;
    if (leaves.empty()) fail(path, "a cycle of '$ref's that never reaches a schema");
    if (leaves.size() > JsonSchema::kMaxMembers)
      fail(path, "more than " + std::to_string(JsonSchema::kMaxMembers) +
                     " alternatives in all (anyOf and $ref followed) are not supported");
    out_.nodes_[start].leaves = std::move(leaves);
  }
}

JsonSchema::JsonSchema() {
  nodes_.emplace_back();  // kAny: every kind, any keys, any items
}

std::shared_ptr<const JsonSchema> JsonSchema::compile(const json& schema,
                                                      const std::string& where) {
  auto out = std::shared_ptr<JsonSchema>(new JsonSchema());
  SchemaCompiler compiler(schema, where, *out);
  out->root_ = compiler.compile(schema, where);
  compiler.finish();
  return out;
}

std::shared_ptr<const JsonSchema> JsonSchema::tool_call(const std::vector<Tool>& tools) {
  MOEX_CHECK(!tools.empty() && tools.size() <= kMaxMembers, "tool_call: ", tools.size(),
             " tools (1..", kMaxMembers, ")");
  auto out = std::shared_ptr<JsonSchema>(new JsonSchema());
  const json no_parameters = {{"type", "object"}, {"properties", json::object()}};
  std::vector<int> calls;
  for (const Tool& tool : tools) {
    // Arguments are an object: a schema without a type gets type object; another type is refused.
    json parameters = tool.parameters.is_null() ? no_parameters : tool.parameters;
    if (!parameters.is_object())
      throw Error(tool.where + ": the parameters must be a JSON Schema object");
    if (!parameters.contains("type")) parameters["type"] = "object";
    if (parameters["type"] != "object")
      throw Error(tool.where +
                  ": the parameters must describe an object (type: object), got type " +
                  parameters["type"].dump());
    SchemaCompiler compiler(parameters, tool.where, *out);
    const int arguments = compiler.compile(parameters, tool.where);
    compiler.finish();
    Node call;
    call.kinds = kObject;
    call.property_names = {"name", "arguments"};
    call.property_nodes = {static_cast<int>(out->nodes_.size()) + 1, arguments};
    call.required = 3;
    call.additional = -1;
    out->nodes_.push_back(std::move(call));
    Node name;
    name.kinds = kString;
    name.literals = {json(tool.name).dump(-1, ' ', false, json::error_handler_t::replace)};
    out->nodes_.push_back(std::move(name));
    calls.push_back(static_cast<int>(out->nodes_.size()) - 2);
  }
  if (calls.size() == 1) {
    out->root_ = calls[0];
  } else {
    Node any_call;
    any_call.leaves = calls;
    any_call.alternatives = std::move(calls);
    out->nodes_.push_back(std::move(any_call));
    out->root_ = static_cast<int>(out->nodes_.size()) - 1;
  }
  return out;
}

std::shared_ptr<const JsonSchema> JsonSchema::any() {
  static const std::shared_ptr<const JsonSchema> schema(new JsonSchema());
  return schema;
}

std::shared_ptr<const JsonSchema> JsonSchema::any_object() {
  static const std::shared_ptr<const JsonSchema> schema =
      compile(json{{"type", "object"}, {"additionalProperties", true}}, "json_object");
  return schema;
}

}  // namespace moex::infer
