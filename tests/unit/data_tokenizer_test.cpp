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

}  // namespace
}  // namespace moex::data
