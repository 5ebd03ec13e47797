// Strict config reading: typed getters, defaults, and errors that name the file and the field.
#include <gtest/gtest.h>

#include <functional>

#include "core/json_reader.h"

namespace moex {
namespace {

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(JsonReader, ReadsTypedFieldsAndDefaults) {
  JsonReader r = JsonReader::from_string(R"({"a": 3, "b": 0.5, "c": "x", "d": true, "m": {"k": [1, 2]}})", "cfg.json");
  EXPECT_EQ(r.get_int("a"), 3);
  EXPECT_DOUBLE_EQ(r.get_double("b"), 0.5);
  EXPECT_EQ(r.get_string("c"), "x");
  EXPECT_TRUE(r.get_bool("d", false));
  EXPECT_EQ(r.get_int("missing", 7), 7);
  JsonReader m = r.child("m");
  EXPECT_EQ(m.get_int_list("k", 2, 0), (std::vector<int64_t>{1, 2}));
  EXPECT_NO_THROW(r.finish());
}

// A known field set to null is unset: the default of a getter that has one, "is required" for
// one that has none; never an unknown field. An unknown field set to null still is one.
TEST(JsonReader, NullFieldsReadAsUnset) {
  JsonReader r = JsonReader::from_string(
      R"({"a": null, "b": null, "c": null, "d": null, "e": null, "m": null})", "n.json");
  EXPECT_EQ(r.get_int("a", 7), 7);
  EXPECT_DOUBLE_EQ(r.get_double("b", 0.5), 0.5);
  EXPECT_EQ(r.get_string("c", "x"), "x");
  EXPECT_FALSE(r.get_bool("d", false));
  EXPECT_NE(error_of([&] { r.get_int("e"); }).find("n.json: e"), std::string::npos);
  r.child("m");
  EXPECT_NO_THROW(r.finish());
  JsonReader u = JsonReader::from_string(R"({"stray": null})", "u.json");
  EXPECT_NE(error_of([&] { u.finish(); }).find("unknown field 'stray'"), std::string::npos);
}

TEST(JsonReader, UnknownFieldNamesFileAndPath) {
  JsonReader r = JsonReader::from_string(R"({"a": 1, "m": {"top_k": 2, "topk": 3}, "_comment": "ok"})", "tiny.json");
  r.get_int("a");
  r.child("m").get_int("top_k");
  const std::string msg = error_of([&] { r.finish(); });
  EXPECT_NE(msg.find("tiny.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("m.topk"), std::string::npos) << msg;
}

// The unknown field's message suggests the known field beside it that it is a typo of: one asked
// for at the same level, given or not; a stranger name gets no hint.
TEST(JsonReader, UnknownFieldSuggestsTheFieldItMisspells) {
  JsonReader r = JsonReader::from_string(
      R"({"m": {"learning_rte": 1}, "stray": 2, "warmup": 3})", "hint.json");
  JsonReader m = r.child("m");
  m.get_double("learning_rate", 0.1);  // absent: its default, and still a known name
  m.get_double("weight_decay", 0.0);
  r.get_int("warmup_steps", 0);
  const std::string msg = error_of([&] { r.finish(); });
  EXPECT_NE(msg.find("unknown field 'm.learning_rte' (did you mean 'learning_rate'?)"),
            std::string::npos)
      << msg;
  JsonReader top = JsonReader::from_string(R"({"stray": 2, "warmup_step": 3})", "top.json");
  top.get_int("warmup_steps", 0);
  const std::string stray = error_of([&] { top.finish(); });
  EXPECT_NE(stray.find("unknown field 'stray'"), std::string::npos) << stray;
  EXPECT_EQ(stray.find("did you mean"), std::string::npos) << stray;
  JsonReader typo = JsonReader::from_string(R"({"warmup_step": 3})", "typo.json");
  typo.get_int("warmup_steps", 0);
  EXPECT_NE(error_of([&] { typo.finish(); }).find("(did you mean 'warmup_steps'?)"),
            std::string::npos);
}

TEST(JsonReader, WrongTypesAndChoicesNameTheField) {
  JsonReader r = JsonReader::from_string(R"({"n": "four", "norm": "batchnorm", "list": [1, 2, 3]})", "c.json");
  EXPECT_NE(error_of([&] { r.get_int("n"); }).find("c.json: n must be an integer"), std::string::npos);
  const std::string choice = error_of([&] { r.get_choice("norm", {"rmsnorm", "layernorm"}, "rmsnorm"); });
  EXPECT_NE(choice.find("norm is 'batchnorm'"), std::string::npos) << choice;
  EXPECT_NE(error_of([&] { r.get_int_list("list", 2, 0); }).find("has 3 entries"), std::string::npos);
  EXPECT_NE(error_of([&] { r.get_int("absent"); }).find("absent is required"), std::string::npos);
}

// nlohmann would keep the last of two equal keys; which one the author meant is unknowable, so a
// repeated key is an error naming its path, at any depth, in files and in requests alike.
TEST(JsonReader, RepeatedKeysAreErrorsNamingThePath) {
  const std::string nested =
      error_of([] { parse_json(R"({"a": 1, "m": {"k": [{"x": 1, "x": 2}]}})", "c.json"); });
  EXPECT_NE(nested.find("c.json: invalid JSON: the key \"m.k.x\" appears twice in one object"),
            std::string::npos)
      << nested;
  EXPECT_NE(error_of([] {
              JsonReader::from_string(R"({"a": 1, "a": 1})", "t.json");
            }).find("t.json: invalid JSON: the key \"a\" appears twice"),
            std::string::npos);
  // The same key in sibling objects is no repeat.
  EXPECT_EQ(parse_json(R"({"p": {"x": 1}, "q": {"x": 2}, "r": [{"x": 3}, {"x": 4}]})", "ok.json")
                .at("r")
                .at(1)
                .at("x"),
            4);
}

TEST(JsonReader, MalformedJsonNamesTheFile) {
  const std::string msg = error_of([] { JsonReader::from_string("{\"a\": 1,", "broken.json"); });
  EXPECT_NE(msg.find("broken.json: invalid JSON"), std::string::npos) << msg;
  EXPECT_NE(error_of([] { JsonReader::from_file("/nonexistent/x.json"); }).find("cannot open"), std::string::npos);
}

}  // namespace
}  // namespace moex
