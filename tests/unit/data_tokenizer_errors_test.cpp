// Malformed tokenizer files: one moex::Error that names the file and the field.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/error.h"
#include "data/tokenizer.h"
#include "data/tokenizer_json.h"

namespace moex::data {
namespace {

namespace fs = std::filesystem;

// A tiny valid BPE tokenizer.json, edited by each test.
const char* kValid = R"({
  "added_tokens": [{"id": 0, "content": "<s>", "special": true}],
  "normalizer": null,
  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false},
  "post_processor": null,
  "decoder": {"type": "ByteLevel"},
  "model": {"type": "BPE", "vocab": {"<s>": 0, "a": 1, "b": 2, "ab": 3}, "merges": ["a b"]}
})";

std::string replaced(std::string s, const std::string& from, const std::string& to) {
  const size_t at = s.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  return s.replace(at, from.size(), to);
}

// The error message of opening `content` written to a file, or "" when it opened.
std::string error_of(const std::string& content) {
  const fs::path path =
      fs::temp_directory_path() / ("moex_bad_tokenizer_" + std::to_string(::getpid()) + ".json");
  std::ofstream(path) << content;
  std::string message;
  try {
    open_tokenizer(path.string());
  } catch (const Error& e) {
    message = e.what();
  }
  fs::remove(path);
  if (!message.empty()) {
    EXPECT_NE(message.find(path.string()), std::string::npos) << message;
  }
  return message;
}

TEST(DataTokenizerErrors, ValidBaseOpens) {
  EXPECT_EQ(error_of(kValid), "");
  const auto tok = parse_tokenizer_json(kValid, "mem");
  EXPECT_EQ(tok->encode("ab<s>ba"), (std::vector<int32_t>{3, 0, 2, 1}));
  EXPECT_EQ(tok->decode({3, 0, 2, 1}, false), "ab<s>ba");
}

// Editors on some systems start a JSON file with a UTF-8 byte order mark: still a tokenizer.json.
TEST(DataTokenizerErrors, ByteOrderMarkBeforeTheJsonOpens) {
  EXPECT_EQ(error_of("\xEF\xBB\xBF" + std::string(kValid)), "");
  const std::string m = error_of("\xEF\xBB\xBF" + std::string(kValid).substr(0, 80));
  EXPECT_NE(m.find("not valid JSON"), std::string::npos) << m;
}

TEST(DataTokenizerErrors, BadJson) {
  const std::string m = error_of(std::string(kValid).substr(0, 80));
  EXPECT_NE(m.find("not valid JSON"), std::string::npos) << m;
}

TEST(DataTokenizerErrors, MissingVocab) {
  const std::string m =
      error_of(replaced(kValid, R"("vocab": {"<s>": 0, "a": 1, "b": 2, "ab": 3}, )", ""));
  EXPECT_NE(m.find("model.vocab"), std::string::npos) << m;
  EXPECT_NE(m.find("missing"), std::string::npos) << m;
}

TEST(DataTokenizerErrors, MissingModel) {
  const std::string m = error_of(R"({"added_tokens": []})");
  EXPECT_NE(m.find("field model"), std::string::npos) << m;
}

TEST(DataTokenizerErrors, UnknownModelType) {
  const std::string m = error_of(replaced(kValid, R"("type": "BPE")", R"("type": "WordPiece")"));
  EXPECT_NE(m.find("model.type"), std::string::npos) << m;
  EXPECT_NE(m.find("WordPiece"), std::string::npos) << m;
}

TEST(DataTokenizerErrors, MergeNamesUnknownToken) {
  const std::string m = error_of(replaced(kValid, R"(["a b"])", R"(["a b", "a zz"])"));
  EXPECT_NE(m.find("model.merges[1]"), std::string::npos) << m;
  EXPECT_NE(m.find("'zz'"), std::string::npos) << m;
}

TEST(DataTokenizerErrors, MergeWithoutSpace) {
  const std::string m = error_of(replaced(kValid, R"(["a b"])", R"(["ab"])"));
  EXPECT_NE(m.find("model.merges[0]"), std::string::npos) << m;
}

TEST(DataTokenizerErrors, MergePairsAreAccepted) {
  EXPECT_EQ(error_of(replaced(kValid, R"(["a b"])", R"([["a", "b"]])")), "");
  const std::string m = error_of(replaced(kValid, R"(["a b"])", R"([["a", 2]])"));
  EXPECT_NE(m.find("model.merges[0]"), std::string::npos) << m;
}

TEST(DataTokenizerErrors, VocabIdNotInteger) {
  const std::string m = error_of(replaced(kValid, R"("a": 1)", R"("a": "one")"));
  EXPECT_NE(m.find("model.vocab[\"a\"]"), std::string::npos) << m;
}

// Two tokens with one id: decoding that id could give either, so the file is refused by name.
TEST(DataTokenizerErrors, VocabIdGivenTwice) {
  const std::string m = error_of(replaced(kValid, R"("b": 2)", R"("b": 1)"));
  EXPECT_NE(m.find("model.vocab[\"b\"]: id 1 is also the id of \"a\""), std::string::npos) << m;
}

TEST(DataTokenizerErrors, UnsupportedPreTokenizer) {
  const std::string m =
      error_of(replaced(kValid, R"({"type": "ByteLevel", "add_prefix_space": false})",
                        R"({"type": "BertPreTokenizer"})"));
  EXPECT_NE(m.find("pre_tokenizer.type"), std::string::npos) << m;
}

TEST(DataTokenizerErrors, AddedTokenWithoutId) {
  const std::string m = error_of(replaced(kValid, R"("id": 0, )", ""));
  EXPECT_NE(m.find("added_tokens[0].id"), std::string::npos) << m;
}

TEST(DataTokenizerErrors, NotATokenizerAtAll) {
  const fs::path path = fs::temp_directory_path() / "moex_not_a_tokenizer.model";
  std::ofstream(path) << "this is neither JSON nor a protobuf";
  try {
    open_tokenizer(path.string());
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
  }
  fs::remove(path);
  EXPECT_THROW(open_tokenizer("/nonexistent/tokenizer.json"), Error);
}

}  // namespace
}  // namespace moex::data
