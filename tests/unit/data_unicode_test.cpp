// UTF-8 helpers, the Unicode classes and the hand-written GPT-2 split.
#include <gtest/gtest.h>

#include "data/bpe_byte_level.h"
#include "data/unicode.h"

namespace moex::data {
namespace {

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  for (auto p : gpt2_split(s)) out.emplace_back(p);
  return out;
}

TEST(DataUnicode, Classes) {
  EXPECT_TRUE(is_letter('a'));
  EXPECT_TRUE(is_letter(0x00E9));   // é
  EXPECT_TRUE(is_letter(0x4E2D));   // 中
  EXPECT_TRUE(is_letter(0x0928));   // न
  EXPECT_FALSE(is_letter(0x094D));  // Devanagari virama (Mn)
  EXPECT_FALSE(is_letter('1'));
  EXPECT_TRUE(is_number(0x0663));  // Arabic-Indic three
  EXPECT_TRUE(is_number(0x00BD));  // ½ (No)
  EXPECT_FALSE(is_number(0x1F600));
  EXPECT_TRUE(is_whitespace(0x3000));
  EXPECT_FALSE(is_whitespace(0x200B));  // zero width space is not White_Space
}

TEST(DataUnicode, Utf8) {
  std::string s;
  for (uint32_t cp : {0x41u, 0xE9u, 0x4E2Du, 0x1F600u}) utf8_append(cp, &s);
  EXPECT_EQ(s, "A\xC3\xA9\xE4\xB8\xAD\xF0\x9F\x98\x80");
  size_t pos = 0;
  std::vector<uint32_t> back;
  while (pos < s.size()) back.push_back(utf8_next(s, &pos));
  EXPECT_EQ(back, (std::vector<uint32_t>{0x41, 0xE9, 0x4E2D, 0x1F600}));
  EXPECT_TRUE(is_valid_utf8(s));
  EXPECT_FALSE(is_valid_utf8("\xED\xA0\x80"));  // a surrogate
  // One U+FFFD per maximal subpart: a truncated 3-byte sequence is one, a stray byte is one.
  EXPECT_EQ(utf8_sanitize("a\xE4\xB8"
                          "b\xFF"),
            "a\xEF\xBF\xBD"
            "b\xEF\xBF\xBD");
}

TEST(DataUnicode, Gpt2Split) {
  EXPECT_EQ(split("Hello world! It's 2024."),
            (std::vector<std::string>{"Hello", " world", "!", " It", "'s", " 2024", "."}));
  EXPECT_EQ(split("a  b"), (std::vector<std::string>{"a", " ", " b"}));
  EXPECT_EQ(split("a \n b  "), (std::vector<std::string>{"a", " \n", " b", "  "}));
  EXPECT_EQ(split("x\ny"), (std::vector<std::string>{"x", "\n", "y"}));
  EXPECT_EQ(split("don'T"), (std::vector<std::string>{"don", "'", "T"}));  // case-sensitive
  EXPECT_EQ(split("?!'s"), (std::vector<std::string>{"?!'", "s"}));
  EXPECT_EQ(split(""), std::vector<std::string>{});
}

TEST(DataUnicode, ByteLevelMapRoundTrips) {
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  const std::string encoded = byte_level_encode(all);
  EXPECT_EQ(byte_level_encode(" "), "\xC4\xA0");  // Ġ
  std::string back;
  ASSERT_TRUE(byte_level_decode(encoded, &back));
  EXPECT_EQ(back, all);
}

}  // namespace
}  // namespace moex::data
