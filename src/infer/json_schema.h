// A JSON Schema compiled for decoding held to it (OpenAI's response_format json_schema, forced
// tool calls): a table of nodes that infer/json_prefix.h walks byte by byte. The subset is the
// one structured-output clients send (Pydantic, zod, OpenAI's strict mode); a keyword that would
// constrain values in a way not built here is refused with an error naming its path, never
// ignored (docs/architecture.md §Serving, "Structured output").
//
// Built: type (one or a list), properties, required, additionalProperties (false, true or a
// schema), items, minItems, maxItems, minLength, maxLength, enum, const, anyOf, oneOf (read as
// anyOf: a JSON text that matches two alternatives is accepted), $ref to "#", "#/$defs/..." or
// "#/definitions/...", and $defs. Annotations (title, description, default, examples, format,
// $schema, $id, $comment, strict, deprecated, readOnly, writeOnly) are accepted and not enforced;
// in JSON Schema format is an annotation unless a validator opts in.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace moex::infer {

class JsonSchema {
 public:
  // The kinds of JSON value a node allows (a bit mask).
  enum Kind : uint8_t {
    kObject = 1,
    kArray = 2,
    kString = 4,
    kNumber = 8,    // any JSON number
    kInteger = 16,  // digits only: no fraction, no exponent
    kBoolean = 32,
    kNull = 64,
    kAnyKind = 127,
  };
  static constexpr int kAny = 0;  // node 0: any JSON value
  // Properties of one object, values of one enum and the plain schemas one anyOf (with the
  // anyOfs and $refs inside it) may be: bit masks and readings (infer/json_prefix.h).
  static constexpr int kMaxMembers = 64;
  // Bounds that keep a client's schema from costing the server more than a request should.
  static constexpr size_t kMaxNodes = 4096;  // schemas in one document
  static constexpr int kMaxNesting = 128;    // schemas one inside the other, $refs followed
  static constexpr size_t kMaxText = 65535;  // bytes of a property name or an enum value

  struct Node {
    uint8_t kinds = kAnyKind;
    // Object: the declared properties (names as UTF-8, unescaped), the node of each, the
    // required ones (bits), and the node of any other key (-1: no other key).
    std::vector<std::string> property_names;
    std::vector<int> property_nodes;
    uint64_t required = 0;
    int additional = kAny;
    // Array: the items' node and how many.
    int items = kAny;
    int64_t min_items = 0, max_items = -1;  // -1: no limit
    // String: how many characters (escapes count one, UTF-8 sequences one).
    int64_t min_length = 0, max_length = -1;
    // enum / const: the value must be one of these texts (compact JSON, nlohmann's dump).
    std::vector<std::string> literals;
    // anyOf / oneOf / $ref: the value matches one of these nodes (empty: this node alone), and
    // the nodes without alternatives that this comes to (each once, cycles left out).
    std::vector<int> alternatives;
    std::vector<int> leaves;
  };

  // Compiles `schema`. `where` names it in errors ("response_format.json_schema.schema"): a
  // keyword outside the subset, a malformed value or an unresolvable $ref is an Error naming its
  // path ("...schema.properties.age: 'minimum' is not supported").
  static std::shared_ptr<const JsonSchema> compile(const nlohmann::json& schema,
                                                   const std::string& where);
  // One function tool: a call is {"name": name, "arguments": <an object matching parameters>}.
  struct Tool {
    std::string name;
    nlohmann::json parameters;  // null: no parameters (arguments {})
    std::string where;          // names the parameters in errors ("tools[0].function.parameters")
  };
  // A call of one of `tools` (each tool's parameters compiled as its own document, so its $refs
  // resolve inside it).
  static std::shared_ptr<const JsonSchema> tool_call(const std::vector<Tool>& tools);
  // Any JSON value; any JSON object (response_format json_object).
  static std::shared_ptr<const JsonSchema> any();
  static std::shared_ptr<const JsonSchema> any_object();

  const Node& node(int index) const { return nodes_[static_cast<size_t>(index)]; }
  int root() const { return root_; }

 private:
  JsonSchema();
  std::vector<Node> nodes_;
  int root_ = kAny;
  friend class SchemaCompiler;
};

}  // namespace moex::infer
