// Hugging Face tokenizer.json against ids recorded by an independent encoder
// (tests/reference/make_tokenizer_fixtures.mjs: @lenml/tokenizers, a transformers.js fork).
#include "unit/data_tokenizer_cases.h"

namespace moex::data {
namespace {

TEST(DataTokenizer, MixtralKnownIds) {
  const auto tok = open_tokenizer((fixtures() / "llama2" / "tokenizer.json").string());
  EXPECT_EQ(show(tok->encode("Hello world! Bonjour le monde.")),
            "[1, 22557, 1526, 28808, 8500, 18777, 462, 15004, 28723]");
  EXPECT_EQ(tok->vocab_size(), 32000);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->token_to_id("<unk>"), 0);
  EXPECT_EQ(tok->token_to_id("\xE2\x96\x81Hello"), 22557);
  EXPECT_EQ(tok->token_to_id("no such token"), -1);
  EXPECT_EQ(tok->id_to_token(22557), "\xE2\x96\x81Hello");
  EXPECT_TRUE(tok->is_special(1));
  EXPECT_FALSE(tok->is_special(22557));
  EXPECT_EQ(tok->decode({1, 22557, 1526, 2}), "Hello world");
  EXPECT_THROW(tok->decode({32000}), Error);
  EXPECT_THROW(tok->id_to_token(-1), Error);
}

TEST(DataTokenizer, MixtralCases) {
  const auto tok = open_tokenizer((fixtures() / "llama2" / "tokenizer.json").string());
  int lossless = 0;
  EXPECT_EQ(check_cases(*tok, "llama2_cases.json", &lossless), 0);
  EXPECT_GE(lossless, 40);
}

// The newer export of the same tokenizer: Metaspace pre-tokenizer, merges as [a, b] pairs.
TEST(DataTokenizer, MixtralMetaspaceAndPairMergesCases) {
  json j = json::parse(read(fixtures() / "llama2" / "tokenizer.json"));
  for (json& m : j["model"]["merges"]) {
    const std::string s = m;
    const size_t space = s.find(' ');
    m = json::array({s.substr(0, space), s.substr(space + 1)});
  }
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "Metaspace"},
                        {"replacement", "\xE2\x96\x81"},
                        {"add_prefix_space", true},
                        {"prepend_scheme", "first"},
                        {"split", false}};
  const auto tok = parse_tokenizer_json(j.dump(), "llama2-metaspace",
                                        read(fixtures() / "llama2" / "tokenizer_config.json"));
  int lossless = 0;
  EXPECT_EQ(check_cases(*tok, "llama2_metaspace_cases.json", &lossless), 0);
}

TEST(DataTokenizer, Gpt2ByteLevelCases) {
  const auto tok = open_tokenizer((fixtures() / "gpt2").string());  // a directory works too
  EXPECT_EQ(tok->vocab_size(), 50257);
  EXPECT_EQ(tok->bos_id(), 50256);
  EXPECT_EQ(tok->eos_id(), 50256);
  EXPECT_EQ(show(tok->encode("Hello world")), "[15496, 995]");  // no BOS: ByteLevel post-processor
  int lossless = 0;
  EXPECT_EQ(check_cases(*tok, "gpt2_cases.json", &lossless), 0);
  EXPECT_GE(lossless, 40);
}

// Every byte sequence survives byte-level BPE (invalid UTF-8 comes back as U+FFFD).
TEST(DataTokenizer, Gpt2AllBytesRoundTrip) {
  const auto tok = open_tokenizer((fixtures() / "gpt2" / "tokenizer.json").string());
  std::string all;
  for (int b = 1; b < 128; ++b) all.push_back(static_cast<char>(b));
  EXPECT_EQ(tok->decode(tok->encode(all)), all);
  EXPECT_EQ(tok->decode(tok->encode("a\xFF"
                                    "b")),
            "a\xEF\xBF\xBD"
            "b");
}

// decode_bytes gives the bytes themselves where decode writes U+FFFD: invalid UTF-8 in the text,
// and, token by token, the parts of characters that byte-level (GPT-2, Qwen2.5) and byte-fallback
// (Llama 2) tokenizers split; each token's bytes after the ones before add up to the text.
TEST(DataTokenizer, DecodeBytesKeepsPartsOfCharacters) {
  const std::string text = "a\xFF b \xE4\xB8\xAD\xE6\x96\x87 \xF0\x9F\x98\x80 z";
  for (const char* name : {"gpt2", "qwen2_5", "llama2"}) {
    SCOPED_TRACE(name);
    const auto tok = open_tokenizer((fixtures() / name / "tokenizer.json").string());
    const std::vector<int32_t> ids = tok->encode(text, false);
    EXPECT_EQ(tok->decode_bytes(ids), text);
    EXPECT_NE(tok->decode(ids), text);  // which reads U+FFFD for the 0xFF
    std::string joined;
    int partial = 0;
    for (size_t k = 0; k < ids.size(); ++k) {
      const std::vector<int32_t> before(ids.begin(), ids.begin() + k);
      std::vector<int32_t> upto = before;
      upto.push_back(ids[k]);
      const std::string head = tok->decode_bytes(before), whole = tok->decode_bytes(upto);
      ASSERT_EQ(whole.compare(0, head.size(), head), 0) << "token " << k;
      const std::string part = whole.substr(head.size());
      joined += part;
      if (tok->decode({ids[k]}, false) == "\xEF\xBF\xBD" && part.size() < 4) ++partial;
    }
    EXPECT_EQ(joined, tok->decode_bytes(ids));
    EXPECT_GT(partial, 0) << "no token split a character";
  }
}

}  // namespace
}  // namespace moex::data
