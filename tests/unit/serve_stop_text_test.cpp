// StopText (serve/stop_text.h): the text a client sees ends right before the first stop string,
// wherever the token boundaries fall, and no part of a stop string is ever released; request
// parsing (serve/openai_api.h) names the offending field.
#include <gtest/gtest.h>

#include <filesystem>

#include "data/tokenizer.h"
#include "serve/openai_api.h"
#include "serve/stop_text.h"

namespace moex::serve {
namespace {

// The GPT-2 byte-level BPE of the tokenizer fixtures: stop strings fall inside and across its
// tokens, and accented characters may span two tokens.
std::unique_ptr<data::Tokenizer> byte_tokenizer() {
  const std::filesystem::path dir = std::filesystem::path(MOEX_SOURCE_DIR) / "tests" / "fixtures" /
                                    "tokenizers" / "gpt2" / "tokenizer.json";
  return data::open_tokenizer(dir.string());
}

// Feeds `text` one byte-token at a time; returns what was released, and whether it stopped.
std::pair<std::string, bool> run(const data::Tokenizer& tok, const std::string& text,
                                 std::vector<std::string> stop) {
  StopText st(tok, {}, std::move(stop));
  std::string out;
  for (int32_t id : tok.encode(text, false)) {
    const std::string piece = st.push(id);
    out += piece;
  }
  out += st.finish();
  return {out, st.stopped()};
}

TEST(StopText, EndsBeforeTheFirstStopString) {
  const auto tok = byte_tokenizer();
  EXPECT_EQ(run(*tok, "Hello world. The end", {"."}), std::make_pair(std::string("Hello world"), true));
  EXPECT_EQ(run(*tok, "abc STOP def STOP", {"STOP", "def"}),
            std::make_pair(std::string("abc "), true));
  EXPECT_EQ(run(*tok, "no stop here", {"xyz"}), std::make_pair(std::string("no stop here"), false));
  EXPECT_EQ(run(*tok, "ends with sto", {"stop"}), std::make_pair(std::string("ends with sto"), false));
  EXPECT_EQ(run(*tok, "héllo wörld", {"ö"}), std::make_pair(std::string("héllo w"), true));
}

TEST(StopText, NeverReleasesAPartOfAStopString) {
  const auto tok = byte_tokenizer();
  StopText st(*tok, {}, {"<END>"});
  std::string out;
  for (int32_t id : tok->encode("abc<EN", false)) out += st.push(id);
  EXPECT_EQ(out.find('<'), std::string::npos) << "released a possible stop prefix: " << out;
  for (int32_t id : tok->encode("D>tail", false)) out += st.push(id);
  out += st.finish();
  EXPECT_EQ(out, "abc");
  EXPECT_TRUE(st.stopped());
}

TEST(OpenAiApi, ParsingNamesTheField) {
  auto param_of = [](const std::string& body, bool chat) {
    try {
      parse_generation_request(body, chat);
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status, 400);
      return e.param;
    }
    return std::string("(accepted)");
  };
  EXPECT_EQ(param_of("{", false), "");
  EXPECT_EQ(param_of(R"({"prompt": "x"})", false), "model");
  EXPECT_EQ(param_of(R"({"model": "m"})", false), "prompt");
  EXPECT_EQ(param_of(R"({"model": "m", "prompt": {"a": 1}})", false), "prompt");
  EXPECT_EQ(param_of(R"({"model": "m", "prompt": "x", "max_tokens": 0})", false), "max_tokens");
  EXPECT_EQ(param_of(R"({"model": "m", "prompt": "x", "max_tokens": 1.5})", false), "max_tokens");
  EXPECT_EQ(param_of(R"({"model": "m", "prompt": "x", "temperature": 3})", false), "temperature");
  EXPECT_EQ(param_of(R"({"model": "m", "prompt": "x", "stop": ["a","b","c","d","e"]})", false),
            "stop");
  EXPECT_EQ(param_of(R"({"model": "m", "prompt": "x", "stream": "yes"})", false), "stream");
  EXPECT_EQ(param_of(R"({"model": "m", "messages": []})", true), "messages");
  EXPECT_EQ(param_of(R"({"model": "m", "messages": [{"role": "user", "content": 3}]})", true),
            "messages[0].content");
  EXPECT_EQ(param_of(R"({"model": "m", "prompt": [1, 2, 3], "seed": 7, "user": "u"})", false),
            "(accepted)");
  const GenerationRequest r = parse_generation_request(
      R"({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
          {"type": "text", "text": "b"}]}], "max_completion_tokens": 5, "stop": "x"})",
      true);
  ASSERT_EQ(r.messages.size(), 1u);
  EXPECT_EQ(r.messages[0].content, "ab");
  EXPECT_EQ(r.max_tokens.value_or(-1), 5);
  EXPECT_EQ(r.stop, std::vector<std::string>{"x"});
}

// A body nested tens of thousands of levels deep is a 400, not a stack overflow (the chat
// messages are converted recursively); invalid UTF-8 quoted back in an error still serializes.
TEST(OpenAiApi, DeeplyNestedAndInvalidUtf8BodiesAreClearErrors) {
  std::string deep = R"({"model": "m", "messages": [{"role": "user", "content": "hi", "x": )";
  for (int i = 0; i < 30000; ++i) deep += R"({"a": )";
  deep += "1";
  for (int i = 0; i < 30000; ++i) deep += "}";
  deep += "}]}";
  try {
    parse_generation_request(deep, true);
    ADD_FAILURE() << "a 30000-level body was accepted";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_NE(e.message.find("levels deep"), std::string::npos) << e.message;
  }
  const std::string bad_utf8 = std::string(R"({"model": "m", "prompt": ")") + "\xff\xfe" + "\"";
  try {
    parse_generation_request(bad_utf8, false);
    ADD_FAILURE() << "invalid UTF-8 was accepted";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    const std::string body =
        e.to_json().dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    EXPECT_NE(body.find("not valid JSON"), std::string::npos) << body;
  }
}

}  // namespace
}  // namespace moex::serve
