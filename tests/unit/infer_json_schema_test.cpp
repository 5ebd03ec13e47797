// JSON held to a schema (infer/json_schema.h, infer/json_prefix.h) against a reference validator
// written here straight from the schema document, on many random values near each schema (most
// valid, many one mistake away); what the compiler refuses, naming the path; and the constraint's
// mask with a prefix and a suffix (infer/json_constraint.h) against the set of whole outputs.
#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "infer/json_constraint.h"
#include "infer/json_prefix.h"
#include "infer/json_schema.h"

namespace moex::infer {
namespace {

using nlohmann::json;

const json& resolve(const json& s, const json& root) {
  if (!s.is_object() || !s.contains("$ref")) return s;
  const std::string ref = s["$ref"].get<std::string>();
  return resolve(ref == "#" ? root : root.at(json::json_pointer(ref.substr(1))), root);
}

size_t code_points(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

bool has_type(const json& v, const std::string& type) {
  if (type == "object") return v.is_object();
  if (type == "array") return v.is_array();
  if (type == "string") return v.is_string();
  if (type == "integer") return v.is_number_integer() || v.is_number_unsigned();
  if (type == "number") return v.is_number();
  if (type == "boolean") return v.is_boolean();
  return v.is_null();
}

// The subset's meaning, read from the document (declared properties without
// additionalProperties allow no other keys; integers are written without a fraction).
bool valid(const json& v, const json& schema, const json& root) {
  const json& s = resolve(schema, root);
  if (s.is_boolean()) return s.get<bool>();
  if (s.contains("anyOf")) {
    for (const json& alternative : s["anyOf"])
      if (valid(v, alternative, root)) return true;
    return false;
  }
  if (s.contains("type")) {
    const json types = s["type"].is_array() ? s["type"] : json::array({s["type"]});
    bool any = false;
    for (const json& t : types) any = any || has_type(v, t.get<std::string>());
    if (!any) return false;
  }
  if (s.contains("enum") || s.contains("const")) {
    const json values = s.contains("enum") ? s["enum"] : json::array({s["const"]});
    bool any = false;
    for (const json& e : values) any = any || e.dump() == v.dump();
    if (!any) return false;
  }
  if (v.is_object()) {
    const json props = s.value("properties", json::object());
    const json extra = s.contains("additionalProperties") ? s["additionalProperties"]
                                                          : json(!s.contains("properties"));
    for (const auto& [key, value] : v.items()) {
      if (props.contains(key) ? !valid(value, props[key], root) : !valid(value, extra, root))
        return false;
    }
    for (const json& name : s.value("required", json::array()))
      if (!v.contains(name.get<std::string>())) return false;
  }
  if (v.is_array()) {
    if (v.size() < s.value("minItems", size_t{0}) || v.size() > s.value("maxItems", size_t{1000}))
      return false;
    for (const json& item : v)
      if (!valid(item, s.value("items", json(true)), root)) return false;
  }
  if (v.is_string()) {
    const size_t n = code_points(v.get<std::string>());
    if (n < s.value("minLength", size_t{0}) || n > s.value("maxLength", size_t{1000})) return false;
  }
  return true;
}

// Random values near a schema: what it describes, with a mistake now and then.
class Generator {
 public:
  Generator(const json& root, uint64_t seed) : root_(root), seed_(seed) {}

  json value(const json& schema, int depth) {
    const json& s = resolve(schema, root_);
    if (chance(12) || s.is_boolean() || depth > 4) return anything();
    if (s.contains("anyOf")) return value(s["anyOf"][pick(s["anyOf"].size())], depth);
    if (s.contains("enum")) return s["enum"][pick(s["enum"].size())];
    if (s.contains("const")) return s["const"];
    std::string type = "object";
    if (s.contains("type"))
      type = s["type"].is_array() ? s["type"][pick(s["type"].size())].get<std::string>()
                                  : s["type"].get<std::string>();
    if (type == "object") {
      json out = json::object();
      const json props = s.value("properties", json::object());
      std::vector<std::string> required;
      for (const json& r : s.value("required", json::array()))
        required.push_back(r.get<std::string>());
      for (const auto& [key, sub] : props.items()) {
        const bool needed = std::find(required.begin(), required.end(), key) != required.end();
        if (needed ? !chance(15) : chance(2)) out[key] = value(sub, depth + 1);
      }
      if (chance(8)) out["zz"] = value(s.value("additionalProperties", json(true)), depth + 1);
      return out;
    }
    if (type == "array") {
      const int64_t lo = s.value("minItems", int64_t{0}), hi = s.value("maxItems", lo + 3);
      const int64_t n = std::max<int64_t>(0, lo - 1 + static_cast<int64_t>(pick(hi - lo + 3)));
      json out = json::array();
      for (int64_t i = 0; i < n; ++i) out.push_back(value(s.value("items", json(true)), depth + 1));
      return out;
    }
    if (type == "string") {
      const int64_t lo = s.value("minLength", int64_t{0}), hi = s.value("maxLength", lo + 4);
      const int64_t n = std::max<int64_t>(0, lo - 1 + static_cast<int64_t>(pick(hi - lo + 3)));
      const char* pieces[] = {"a", "Z", "\xc3\xa9", "\"", "\\", "\n", " ", "/", "7"};
      std::string text;
      for (int64_t i = 0; i < n; ++i) text += pieces[pick(9)];
      return text;
    }
    if (type == "integer") return static_cast<int64_t>(pick(2001)) - 1000;
    if (type == "number")
      return chance(2) ? json(1.5 * (static_cast<double>(pick(9)) - 4)) : json(3);
    if (type == "boolean") return chance(2);
    return nullptr;
  }

 private:
  uint64_t pick(uint64_t n) { return philox_u32(seed_, counter_++, 0) % n; }
  bool chance(uint64_t one_in) { return pick(one_in) == 0; }
  json anything() {
    const json options[] = {"q",           7,           2.5,
                            true,          nullptr,     json::object(),
                            json::array(), {{"zz", 1}}, json::array({1, "a"}),
                            -0.0};
    return options[pick(10)];
  }
  const json& root_;
  uint64_t seed_, counter_ = 0;
};

bool matches(const std::shared_ptr<const JsonSchema>& schema, const std::string& text) {
  JsonPrefix p(*schema);
  return p.feed(text) && p.complete();
}

const char* const kSchemas[] = {
    // Nested objects through $defs, an optional reference, bounded strings and arrays, an enum.
    R"({"type": "object", "properties": {
          "name": {"type": "string", "minLength": 1, "maxLength": 5},
          "age": {"type": "integer", "description": "years"},
          "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b", "ç"]},
                   "minItems": 1, "maxItems": 3},
          "spouse": {"anyOf": [{"$ref": "#/$defs/P"}, {"type": "null"}]}},
        "required": ["name", "age"],
        "$defs": {"P": {"type": "object", "properties": {"name": {"type": "string"}},
                        "required": ["name"], "additionalProperties": false}}})",
    // Recursion through "#".
    R"({"type": "object", "properties": {"v": {"type": "number"},
          "kids": {"type": "array", "items": {"$ref": "#"}, "maxItems": 2}}, "required": ["v"]})",
    // Two objects told apart only by a value: both readings live until then.
    R"({"anyOf": [
          {"type": "object", "properties": {"kind": {"const": "circle"}, "r": {"type": "number"}},
           "required": ["kind", "r"]},
          {"type": "object", "properties": {"kind": {"const": "square"},
           "side": {"type": "integer"}}, "required": ["kind", "side"]}]})",
    // Any keys, each value of a list of types.
    R"({"type": "object", "additionalProperties": {"type": ["integer", "null"]}})",
    // Literals, one a prefix of another.
    R"({"enum": [1, 12, "x", true, null, {"a": [1]}]})",
    // Any items; declared and other keys.
    R"({"type": "array", "items": true, "minItems": 2})",
    R"({"type": "object", "properties": {"a": {"type": "boolean"}},
        "additionalProperties": true})",
};

TEST(JsonSchema, AcceptsExactlyWhatTheReferenceValidatorDoes) {
  for (size_t k = 0; k < std::size(kSchemas); ++k) {
    const json document = json::parse(kSchemas[k]);
    const auto schema = JsonSchema::compile(document, "schema");
    Generator gen(document, 100 + k);
    int valid_count = 0, invalid_count = 0;
    for (int i = 0; i < 3000; ++i) {
      const json v = gen.value(document, 0);
      const bool want = valid(v, document, document);
      // Compact, and (without container literals, which must be written compact) indented.
      const std::string compact = v.dump();
      ASSERT_EQ(matches(schema, compact), want) << "schema " << k << ": " << compact;
      if (k != 4) {
        ASSERT_EQ(matches(schema, v.dump(2)), want) << "schema " << k << ": " << v.dump(2);
      }
      (want ? valid_count : invalid_count)++;
    }
    // Both outcomes were seen often: the comparison is not one-sided.
    EXPECT_GT(valid_count, 150) << "schema " << k;
    EXPECT_GT(invalid_count, 150) << "schema " << k;
  }
}

TEST(JsonSchema, PrefixesOfMatchingTextsStayViable) {
  const auto schema = JsonSchema::compile(json::parse(kSchemas[0]), "schema");
  const std::string text = R"({"tags": ["ç", "a"], "age": -3, "name": "a\"\u00e9",
      "spouse": {"name": ""}})";
  JsonPrefix p(*schema);
  for (size_t i = 0; i < text.size(); ++i) {
    ASSERT_TRUE(p.feed(text[i])) << "at " << i << ": " << text.substr(0, i + 1);
    EXPECT_EQ(p.complete(), i + 1 == text.size());
  }
  // The first byte no matching text could have is refused: a sixth character, a key not declared,
  // a second "age", a fraction in an integer, a closing brace before "age".
  for (const char* bad : {R"({"name": "abcdef)", R"({"nam_)", R"({"age": 1, "age)", R"({"age": 1.)",
                          R"({"name": "x"})"}) {
    JsonPrefix q(*schema);
    EXPECT_FALSE(q.feed(bad)) << bad;
  }
}

TEST(JsonPrefix, LimitsWhitespaceBetweenTokensNotInStrings) {
  JsonPrefix p(/*object_only=*/true);
  p.limit_whitespace(3);
  // Compact, one space, or a newline and an indent; anything inside strings.
  EXPECT_TRUE(p.feed("{\n   \"a      b\": 1,\"c\" :"));
  for (const char* bad : {"  ", "\t", "\r\n", " \n", "\n    "}) {
    JsonPrefix q = p;
    EXPECT_FALSE(q.feed(bad)) << "'" << bad << "'";
  }
  EXPECT_TRUE(p.feed("\n   2\n}"));
  EXPECT_TRUE(p.complete());
}

std::string compile_error(const std::string& schema) {
  try {
    JsonSchema::compile(json::parse(schema), "response_format.json_schema.schema");
  } catch (const Error& e) {
    return e.message();
  }
  return "(compiled)";
}

TEST(JsonSchema, RefusesWhatItCannotEnforceNamingThePath) {
  EXPECT_EQ(compile_error(R"({"properties": {"age": {"type": "integer", "minimum": 0}}})"),
            "response_format.json_schema.schema.properties.age: 'minimum' is not supported by "
            "moex's structured output");
  EXPECT_NE(compile_error(R"({"type": "strng"})").find("'type' must be one of"), std::string::npos);
  EXPECT_NE(compile_error(R"({"$ref": "#/$defs/Missing"})").find("names nothing"),
            std::string::npos);
  EXPECT_NE(compile_error(R"({"$ref": "https://example.com/s.json"})").find("not supported"),
            std::string::npos);
  EXPECT_NE(compile_error(R"({"properties": {}, "required": ["x"]})").find("not in 'properties'"),
            std::string::npos);
  EXPECT_NE(compile_error(R"({"type": "integer", "enum": ["a"]})").find("no value"),
            std::string::npos);
  EXPECT_NE(compile_error(R"({"minLength": 3, "maxLength": 2})").find("above"), std::string::npos);
  EXPECT_NE(compile_error(R"({"anyOf": [{"type": "string"}], "type": "string"})").find("beside"),
            std::string::npos);
  EXPECT_NE(compile_error(R"({"items": [{"type": "string"}]})").find("tuple"), std::string::npos);
  EXPECT_NE(compile_error("false").find("matches no value"), std::string::npos);
  // Annotations and format are accepted.
  EXPECT_EQ(compile_error(R"({"type": "string", "format": "date-time", "title": "t"})"),
            "(compiled)");
  // What would cost the server more than a request should, or could match nothing.
  EXPECT_NE(compile_error(R"({"$ref": "#/$defs/A", "$defs": {"A": {"$ref": "#/$defs/A"}}})")
                .find("never reaches"),
            std::string::npos);
  EXPECT_NE(compile_error(R"({"$ref": "#"})").find("never reaches"), std::string::npos);
  EXPECT_NE(compile_error(R"({"$ref": "#/anyOf/99999999999999999999999"})").find("'$ref'"),
            std::string::npos);
  json chain = {{"$ref", "#/$defs/a0"}, {"$defs", json::object()}};
  for (int i = 0; i < 300; ++i)
    chain["$defs"]["a" + std::to_string(i)] = {{"$ref", "#/$defs/a" + std::to_string(i + 1)}};
  chain["$defs"]["a300"] = {{"type", "null"}};
  EXPECT_NE(compile_error(chain.dump()).find("nest deeper than"), std::string::npos);
  json wide = {{"anyOf", json::array()}};
  for (int i = 0; i < 40; ++i)
    wide["anyOf"].push_back({{"anyOf", {{{"const", i}}, {{"const", -i - 100}}}}});
  EXPECT_NE(compile_error(wide.dump()).find("alternatives in all"), std::string::npos);
  EXPECT_NE(compile_error(R"({"enum": ["abc", "a"], "minLength": 2})").find("beside 'enum'"),
            std::string::npos);
  EXPECT_NE(compile_error(R"({"properties": {"\u0001": {}}})").find("control character"),
            std::string::npos);
}

TEST(JsonSchema, UnionsRejoinEscapesAndSurrogatesAreRead) {
  // list[int | float]: the two readings of each item join again when it ends.
  const auto numbers =
      JsonSchema::compile(json::parse(R"({"type": "array", "items": {"anyOf": [{"type": "integer"},
          {"type": "number"}]}})"),
                          "s");
  std::string list = "[";
  for (int i = 0; i < 200; ++i) list += std::to_string(i) + (i % 3 ? ".5," : ",");
  list += "1]";
  EXPECT_TRUE(matches(numbers, list));
  // A nullable self-reference.
  const auto chain = JsonSchema::compile(
      json::parse(R"({"anyOf": [{"type": "null"}, {"type": "array", "items": {"$ref": "#"}}]})"),
      "s");
  EXPECT_TRUE(matches(chain, "[[null],[[]]]"));
  // Declared keys are matched on what their escapes stand for; \u is refused there.
  const auto keys = JsonSchema::compile(
      json::parse(R"({"type": "object", "properties": {"a\"b": {"type": "integer"}, "ab":
          {"type": "integer"}}, "additionalProperties": true})"),
      "s");
  EXPECT_TRUE(matches(keys, R"({"a\"b": 1, "ab": 2, "c": 3})"));
  EXPECT_FALSE(matches(keys, R"({"ab": 1, "ab": 2})"));
  EXPECT_FALSE(JsonPrefix(*keys).feed(R"({"a\u0062)"));
  // Without other keys a backslash comes only where an escape writes the name's next byte, so
  // that every accepted prefix can still be finished.
  const auto closed = JsonSchema::compile(
      json::parse(R"({"type": "object", "properties": {"a\"b": {"type": "integer"}, "sure":
          {"type": "integer"}}})"),
      "s");
  EXPECT_FALSE(JsonPrefix(*closed).feed(R"({"sure\)"));
  EXPECT_TRUE(matches(closed, R"({"a\"b": 1})"));
  // Surrogates pair up, and a pair is one character.
  const auto one = JsonSchema::compile(json::parse(R"({"type": "string", "maxLength": 1})"), "s");
  EXPECT_TRUE(matches(one, R"("\ud83d\ude00")"));
  EXPECT_FALSE(matches(one, R"("\ud83d\ude00x")"));
  EXPECT_FALSE(matches(JsonSchema::any(), R"("\ud800")"));
  EXPECT_FALSE(matches(JsonSchema::any(), R"("\ude00")"));
  EXPECT_FALSE(matches(JsonSchema::any(), R"("\ud800x")"));
  EXPECT_FALSE(JsonPrefix().feed(R"("\ud800\u0)"));  // only D can begin the low half
  // UTF-8 is read as RFC 3629 has it: what nlohmann accepts.
  EXPECT_TRUE(matches(JsonSchema::any(), "\"caf\xc3\xa9 \xf0\x9f\x98\x80\""));
  for (const char* bad : {"\"\xff\x80\"", "\"\x80\"", "\"\xc3\"", "\"\xe0\x80\x80\"",
                          "\"\xed\xa0\x80\"", "\"\xf4\x90\x80\x80\""}) {
    EXPECT_FALSE(matches(JsonSchema::any(), bad)) << bad;
    EXPECT_FALSE(nlohmann::json::accept(bad)) << bad;
  }
  // Whitespace inside an enum's text is the text's, not limited.
  const auto spaced_schema = JsonSchema::compile(json::parse(R"({"enum": ["a    b"]})"), "s");
  JsonPrefix spaced(*spaced_schema);
  spaced.limit_whitespace(1);
  EXPECT_TRUE(spaced.feed(R"("a    b")"));
}

// Follows the paths of the lowest and of the highest kept token through a format over a
// vocabulary of fragments: at every step the mask keeps exactly the tokens after which the
// output is still a beginning of a whole output, and the stop token (0) once it is whole.
void expect_masks_lead_to(const std::shared_ptr<const OutputFormat>& format,
                          const std::vector<std::string>& whole, const TokenTexts& fragments) {
  auto texts = std::make_shared<TokenTable>(fragments);
  const int64_t vocab = texts->size();
  for (bool lowest : {true, false}) {
    JsonConstraint c(format, texts);
    std::string so_far;
    for (int step = 0; step < 40; ++step) {
      std::vector<float> logits(vocab, 0.0f);
      c.mask(logits.data(), vocab, {0});
      std::vector<int32_t> kept, want;
      for (int32_t v = 0; v < vocab; ++v)
        if (std::isfinite(logits[v])) kept.push_back(v);
      const bool done = std::find(whole.begin(), whole.end(), so_far) != whole.end();
      for (int32_t v = 0; v < vocab; ++v) {
        const std::string next = so_far + fragments[v];
        bool ok = v == 0 ? done : !fragments[v].empty();
        if (v != 0 && ok) {
          ok = false;
          for (const std::string& w : whole) ok = ok || w.compare(0, next.size(), next) == 0;
        }
        if (ok) want.push_back(v);
      }
      ASSERT_EQ(kept, want) << "after '" << so_far << "'";
      ASSERT_FALSE(kept.empty()) << "after '" << so_far << "'";
      const int32_t t = lowest ? kept.front() : kept.back();
      if (t == 0) break;
      c.advance(t);
      so_far += fragments[t];
    }
    EXPECT_TRUE(c.complete()) << so_far;
    EXPECT_NE(std::find(whole.begin(), whole.end(), so_far), whole.end()) << so_far;
  }
}

TEST(JsonConstraint, KeepsTheTokensThatLeadToAWholeOutput) {
  const auto schema = JsonSchema::compile(
      json::parse(R"({"type": "object", "properties": {"k": {"enum": ["x", "y"]}},
          "required": ["k"]})"),
      "s");
  const TokenTexts fragments = {"",     "<a>",          "<",     "a>",    "{",   "{\"k\"",
                                ":",    "\"x\"",        "\"y\"", "\"z\"", "}",   "}</a>",
                                "</a>", "\"k\":\"y\"}", "a",     "<a>{",  "/a>", "\n<a>"};
  const std::vector<std::string> blocks = {R"(<a>{"k":"x"}</a>)", R"(<a>{"k":"y"}</a>)"};
  expect_masks_lead_to(std::make_shared<OutputFormat>(OutputFormat{"<a>", schema, "</a>", 1, ""}),
                       blocks, fragments);
  // Up to two blocks, one a line (parallel tool calls).
  std::vector<std::string> one_or_two = blocks;
  for (const std::string& first : blocks)
    for (const std::string& second : blocks) one_or_two.push_back(first + "\n" + second);
  expect_masks_lead_to(std::make_shared<OutputFormat>(OutputFormat{"<a>", schema, "</a>", 2, "\n"}),
                       one_or_two, fragments);
}

// A whole output that may still go on (a number at the top level) keeps both the stop token and
// the tokens that continue it.
TEST(JsonConstraint, AWholeNumberMayStillGrow) {
  auto tokens = std::make_shared<TokenTable>(TokenTexts{"", "1", "2", "x", " "});
  JsonConstraint c(
      std::make_shared<OutputFormat>(OutputFormat{
          "", JsonSchema::compile(json::parse(R"({"type": "integer"})"), "s"), "", 1, ""}),
      tokens);
  auto kept = [&] {
    std::vector<float> logits(5, 0.0f);
    c.mask(logits.data(), 5, {0});
    std::vector<int32_t> ids;
    for (int32_t v = 0; v < 5; ++v)
      if (std::isfinite(logits[v])) ids.push_back(v);
    return ids;
  };
  EXPECT_EQ(kept(), (std::vector<int32_t>{1, 2}));
  c.advance(1);
  EXPECT_EQ(kept(), (std::vector<int32_t>{0, 1, 2}));
  c.advance(2);
  EXPECT_TRUE(c.complete());
  c.advance(0);  // the stop token
  EXPECT_TRUE(c.complete());
}

// Random vocabularies of JSON-ish fragments (many sharing beginnings) and random points along
// random outputs: the mask, which walks the tokens sorted and rules out shared beginnings at
// once, keeps exactly the tokens that a reader tried on each token's text alone keeps.
TEST(JsonConstraint, SortedWalkKeepsWhatEachTokenAloneWould) {
  const char* pieces[] = {"{",        "}",       "[",    "]",    "\"", ":",  ",",    " ",
                          "\n",       "a",       "b",    "1",    "0",  ".",  "-",    "e",
                          "t",        "r",       "u",    "n",    "l",  "\\", "name", "age",
                          "\"name\"", "\"age\"", "true", "null", "  "};
  const json document = json::parse(kSchemas[0]);
  const auto schema = JsonSchema::compile(document, "schema");
  auto format = std::make_shared<OutputFormat>(OutputFormat{"", schema, "", 1, ""});
  int compared = 0, whole = 0;
  for (uint64_t trial = 0; trial < 60; ++trial) {
    TokenTexts texts(600);
    for (size_t v = 1; v < texts.size(); ++v) {
      const int n = 1 + static_cast<int>(philox_u32(trial, v, 0) % 4);
      for (int k = 0; k < n; ++k)
        texts[v] += pieces[philox_u32(trial, v, k + 1) % std::size(pieces)];
    }
    auto tokens = std::make_shared<TokenTable>(texts);
    const int64_t vocab = tokens->size();
    JsonConstraint c(format, tokens);
    JsonPrefix alone(*schema);
    alone.limit_whitespace(16);
    // Walks 30 steps along a random path of kept tokens, comparing the masks at each.
    for (int step = 0; step < 30; ++step) {
      std::vector<float> logits(vocab, 0.0f);
      c.mask(logits.data(), vocab, {0});
      std::vector<int32_t> kept, want;
      for (int32_t v = 0; v < vocab; ++v) {
        if (std::isfinite(logits[v])) kept.push_back(v);
        if (v == 0 || texts[v].empty()) continue;
        // Byte by byte, with no whitespace after the whole text (the constraint's rule).
        JsonPrefix p = alone;
        bool ok = true;
        for (char b : texts[v])
          ok = ok && !(std::isspace(static_cast<unsigned char>(b)) && p.complete()) && p.feed(b);
        if (ok && p.started() && !alone.complete()) want.push_back(v);
      }
      if (alone.complete()) want = {0};
      ASSERT_EQ(kept, want) << "trial " << trial << " step " << step;
      ++compared;
      whole += alone.complete();
      if (kept.empty() || kept == std::vector<int32_t>{0}) break;
      const int32_t t = kept[philox_u32(trial, 1000 + step, 0) % kept.size()];
      c.advance(t);
      ASSERT_TRUE(alone.feed(texts[t]));
    }
  }
  EXPECT_GT(compared, 600);  // most walks went far
  EXPECT_GT(whole, 3);       // and some reached a whole object
}

}  // namespace
}  // namespace moex::infer
