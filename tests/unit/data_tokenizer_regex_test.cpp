// tokenizer.json files with a regex Split pre-tokenizer (Qwen2/Qwen2.5/Qwen3, Llama 3) and the
// NFC normalizer, against ids recorded by @lenml/tokenizers (make_tokenizer_fixtures.mjs).
#include <cstdio>

#include "data/pretokenize_split.h"
#include "data/unicode.h"
#include "unit/data_tokenizer_cases.h"

namespace moex::data {
namespace {

// Llama 3.1 and Qwen3 are stored gzipped (9.1 and 11.4 MB as text).
std::string read_gz(const fs::path& p) {
  FILE* pipe = popen(("gzip -dc '" + p.string() + "'").c_str(), "r");
  if (pipe == nullptr) return "";
  std::string out;
  char buf[1 << 16];
  size_t n = 0;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
  pclose(pipe);
  return out;
}

std::unique_ptr<Tokenizer> open_gz(const std::string& dir) {
  const std::string text = read_gz(fixtures() / dir / "tokenizer.json.gz");
  if (text.empty()) throw Error("could not gunzip " + dir + "/tokenizer.json.gz");
  return parse_tokenizer_json(text, dir + "/tokenizer.json",
                              read(fixtures() / dir / "tokenizer_config.json"));
}

std::vector<std::string> pieces(SplitPattern pattern, std::string_view text) {
  SplitSpec spec;
  spec.pattern = pattern;
  std::vector<std::string> out;
  for (std::string_view p : split_pre_tokenize(spec, text)) out.emplace_back(p);
  return out;
}

using Pieces = std::vector<std::string>;

TEST(DataTokenizerRegex, Qwen2AndLlama3Splits) {
  EXPECT_EQ(
      pieces(SplitPattern::kQwen2, "Hello world's 12345!!\n\n  end  "),
      (Pieces{"Hello", " world", "'s", " ", "1", "2", "3", "4", "5", "!!\n\n", " ", " end", "  "}));
  EXPECT_EQ(pieces(SplitPattern::kLlama3, "Hello world's 12345!!\n\n  end  "),
            (Pieces{"Hello", " world", "'s", " ", "123", "45", "!!\n\n", " ", " end", "  "}));
  EXPECT_EQ(pieces(SplitPattern::kQwen2, "I'LL (x) a \n b\t\tc"),
            (Pieces{"I", "'LL", " (", "x", ")", " a", " \n", " b", "\t", "\tc"}));
  EXPECT_EQ(pieces(SplitPattern::kQwen2, ""), Pieces{});
}

TEST(DataTokenizerRegex, SplitBehaviors) {
  SplitSpec spec;
  spec.pattern = SplitPattern::kLiteral;
  spec.literal = "-";
  auto run = [&](SplitBehavior b, bool invert = false) {
    spec.behavior = b;
    spec.invert = invert;
    Pieces out;
    for (std::string_view p : split_pre_tokenize(spec, "a-b--c-")) out.emplace_back(p);
    return out;
  };
  EXPECT_EQ(run(SplitBehavior::kRemoved), (Pieces{"a", "b", "c"}));
  EXPECT_EQ(run(SplitBehavior::kIsolated), (Pieces{"a", "-", "b", "-", "-", "c", "-"}));
  EXPECT_EQ(run(SplitBehavior::kMergedWithPrevious), (Pieces{"a-", "b-", "-", "c-"}));
  EXPECT_EQ(run(SplitBehavior::kMergedWithNext), (Pieces{"a", "-b", "-", "-c", "-"}));
  EXPECT_EQ(run(SplitBehavior::kContiguous), (Pieces{"a", "-", "b", "--", "c", "-"}));
  EXPECT_EQ(run(SplitBehavior::kRemoved, true), (Pieces{"-", "-", "-", "-"}));
}

TEST(DataTokenizerRegex, Nfc) {
  EXPECT_EQ(nfc_normalize("plain ascii"), "plain ascii");
  EXPECT_EQ(nfc_normalize("Cafe\xCC\x81"), "Caf\xC3\xA9");        // e + U+0301
  EXPECT_EQ(nfc_normalize("o\xCC\x82\xCC\xA3"), "\xE1\xBB\x99");  // o + ^ + dot below
  EXPECT_EQ(nfc_normalize("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8"), "\xEA\xB0\x81");  // jamo
  EXPECT_EQ(nfc_normalize("\xE2\x84\xAB"), "\xC3\x85");        // U+212B ANGSTROM SIGN -> U+00C5
  EXPECT_EQ(nfc_normalize("a\xFF\xCC\x81"), "a\xFF\xCC\x81");  // bad byte kept, blocks
}

TEST(DataTokenizerRegex, UnknownRegexIsAnError) {
  json j = json::parse(read(fixtures() / "qwen2_5" / "tokenizer.json"));
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\p{N}{1,4}|.";
  try {
    parse_tokenizer_json(j.dump(), "qwen-edited/tokenizer.json", "");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("qwen-edited/tokenizer.json"), std::string::npos) << what;
    EXPECT_NE(what.find("pre_tokenizer.pretokenizers[0].pattern.Regex"), std::string::npos) << what;
  }
  j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Sideways";
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"String", " "}};
  EXPECT_THROW(parse_tokenizer_json(j.dump(), "qwen-edited", ""), Error);
}

TEST(DataTokenizerRegex, Qwen25Cases) {
  const auto tok = open_tokenizer((fixtures() / "qwen2_5").string());
  EXPECT_EQ(tok->vocab_size(), 151665);
  EXPECT_EQ(tok->eos_id(), tok->token_to_id("<|im_end|>"));
  EXPECT_EQ(show(tok->encode("Hello world! Bonjour le monde.")),
            "[9707, 1879, 0, 13481, 29262, 512, 37800, 13]");
  int lossless = 0;
  EXPECT_EQ(check_cases(*tok, "qwen2_5_cases.json", &lossless), 0);
  EXPECT_GE(lossless, 40);
}

TEST(DataTokenizerRegex, Qwen3Cases) {
  const auto tok = open_gz("qwen3");
  int lossless = 0;
  EXPECT_EQ(check_cases(*tok, "qwen3_cases.json", &lossless), 0);
  EXPECT_GE(lossless, 40);
}

TEST(DataTokenizerRegex, Llama31Cases) {
  const auto tok = open_gz("llama3_1");
  EXPECT_EQ(tok->bos_id(), 128000);
  EXPECT_EQ(tok->eos_id(), 128009);  // <|eot_id|> from tokenizer_config.json
  int lossless = 0;
  EXPECT_EQ(check_cases(*tok, "llama3_1_cases.json", &lossless), 0);
  EXPECT_GE(lossless, 40);
}

}  // namespace
}  // namespace moex::data
