// JSON prefixes (infer/json_prefix.h) against nlohmann::json's own reader: a string is a whole
// JSON text exactly when nlohmann accepts it, over many random strings of JSON's characters;
// every prefix of a valid text is a viable prefix, and the first byte that no text could follow
// is refused. And the constraint (infer/json_constraint.h) on a vocabulary of JSON fragments.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>

#include "core/rng.h"
#include "infer/json_constraint.h"
#include "infer/json_prefix.h"

namespace moex::infer {
namespace {

bool whole(const std::string& s, bool object_only = false) {
  JsonPrefix p(object_only);
  return p.feed(s) && p.complete();
}

// Every prefix of a valid text is viable, and only the whole is complete (or, for a number at
// the top, where the number may end).
void expect_prefixes_viable(const std::string& text) {
  JsonPrefix p;
  for (size_t i = 0; i < text.size(); ++i) ASSERT_TRUE(p.feed(text[i])) << text << " at " << i;
  EXPECT_TRUE(p.complete()) << text;
}

TEST(JsonPrefix, ValidTextsAndTheirPrefixes) {
  for (const std::string text :
       {R"({})", R"([])", R"( { "a" : [ 1, -2.5e+3, 0, 0.25, 1E9, true, false, null ] } )",
        R"("esc \" \\ \/ \b \f \n \r \t \u00e9 \uD83D\uDE00")", R"([[[[]]], {"k": {"k": {}}}])",
        "0", "-0", "12", "1.5", "\"caf\xc3\xa9\"", "true", R"({"a":1,"b":[{"c":"d"}]})"})
    expect_prefixes_viable(text);
}

TEST(JsonPrefix, RefusesTheFirstImpossibleByte) {
  auto refused_at = [](const std::string& text) {
    JsonPrefix p;
    for (size_t i = 0; i < text.size(); ++i)
      if (!p.feed(text[i])) return static_cast<int>(i);
    return -1;
  };
  EXPECT_EQ(refused_at("{,"), 1);
  EXPECT_EQ(refused_at("[1,]"), 3);
  EXPECT_EQ(refused_at("{\"a\" 1}"), 5);
  EXPECT_EQ(refused_at("01"), 1);
  EXPECT_EQ(refused_at("1.e5"), 2);
  EXPECT_EQ(refused_at("tru e"), 3);
  EXPECT_EQ(refused_at("\"\\x\""), 2);
  EXPECT_EQ(refused_at("\"\\u12G4\""), 5);
  EXPECT_EQ(refused_at("{} {}"), 3);
  EXPECT_EQ(refused_at("\"a\nb\""), 2);  // a raw control character in a string
  EXPECT_EQ(refused_at("[1}"), 2);
  JsonPrefix object(/*object_only=*/true);
  EXPECT_FALSE(object.feed("[1]"));
  EXPECT_TRUE(whole(" {\"x\": [1]} \n", true));
  EXPECT_FALSE(whole("\"s\"", true));
  // Nesting deeper than kMaxDepth is refused.
  EXPECT_TRUE(JsonPrefix().feed(std::string(JsonPrefix::kMaxDepth, '[')));
  EXPECT_FALSE(JsonPrefix().feed(std::string(JsonPrefix::kMaxDepth + 1, '[')));
}

// Random strings over JSON's characters: complete() agrees with nlohmann's reader on every one.
TEST(JsonPrefix, WholeTextsAreWhatNlohmannAccepts) {
  const std::string alphabet = "{}[]\":,0123456789.eE+-  tfnrulsa\\u";
  const std::regex huge_exponent("[eE][+-]?[0-9]{3}");
  int accepted = 0;
  for (uint64_t i = 0; i < 200000; ++i) {
    const int len = 1 + static_cast<int>(philox_u32(11, i, 0) % 10);
    std::string s;
    for (int j = 0; j < len; ++j) s += alphabet[philox_u32(11, i, j + 1) % alphabet.size()];
    // nlohmann refuses numbers past a double's range (1E400), which JSON's grammar allows.
    if (std::regex_search(s, huge_exponent)) continue;
    const bool want = nlohmann::json::accept(s);
    ASSERT_EQ(whole(s), want) << "'" << s << "'";
    accepted += want;
  }
  EXPECT_GT(accepted, 500);  // the comparison saw many valid texts, not only failures
}

// A vocabulary of JSON fragments: the constraint keeps exactly the tokens whose text continues
// the JSON, then only the stop token.
TEST(JsonConstraint, MasksWhatCannotFollowThenEndsAtTheStopToken) {
  auto texts = std::make_shared<TokenTable>(
      TokenTexts{"", "{", "}", "\"k\"", ":", "1", ",", " ", "[", "]", "<s>", ""});
  const int64_t vocab = texts->size();
  const std::vector<int32_t> stop = {0};
  JsonConstraint c(
      std::make_shared<OutputFormat>(OutputFormat{"", JsonSchema::any_object(), "", 1, ""}), texts);
  auto kept = [&] {
    std::vector<float> logits(vocab, 0.0f);
    c.mask(logits.data(), vocab, stop);
    std::vector<int32_t> ids;
    for (int64_t v = 0; v < vocab; ++v)
      if (std::isfinite(logits[v])) ids.push_back(static_cast<int32_t>(v));
    return ids;
  };
  EXPECT_EQ(kept(), (std::vector<int32_t>{1}));  // "{": no whitespace first, never "", "<s>"
  for (int32_t t : {1, 3}) c.advance(t);
  EXPECT_EQ(kept(), (std::vector<int32_t>{4, 7}));
  for (int32_t t : {4, 8, 5, 6, 5}) c.advance(t);
  EXPECT_EQ(kept(), (std::vector<int32_t>{5, 6, 7, 9}));  // "1" may make it 11
  for (int32_t t : {9, 2}) c.advance(t);
  EXPECT_TRUE(c.complete());
  EXPECT_EQ(kept(), (std::vector<int32_t>{0}));  // the object is whole: only the stop token
  std::vector<float> logits(vocab, 0.0f);
  EXPECT_EQ(c.mask(logits.data(), vocab, {}), 0);  // and none when there is no stop token
}

}  // namespace
}  // namespace moex::infer
