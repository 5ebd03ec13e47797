// Hugging Face tokenizer.json against ids recorded by an independent encoder
// (tests/reference/make_tokenizer_fixtures.mjs: @lenml/tokenizers, a transformers.js fork).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "data/tokenizer.h"
#include "data/tokenizer_json.h"

namespace moex::data {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

fs::path fixtures() {
  return fs::path(__FILE__).parent_path().parent_path() / "fixtures" / "tokenizers";
}

std::string read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string show(const std::vector<int32_t>& ids) {
  std::string s = "[";
  for (size_t k = 0; k < ids.size(); ++k) s += (k ? ", " : "") + std::to_string(ids[k]);
  return s + "]";
}

// Checks every recorded case; returns how many failed any of the four checks.
int check_cases(const Tokenizer& tok, const std::string& cases_file, int* num_lossless) {
  const json doc = json::parse(read(fixtures() / cases_file));
  int passed = 0;
  *num_lossless = 0;
  for (const json& c : doc.at("cases")) {
    const std::string text = c.at("text");
    const auto want = c.at("ids").get<std::vector<int32_t>>();
    const auto want_plain = c.at("ids_no_special").get<std::vector<int32_t>>();
    const auto got = tok.encode(text, true);
    const auto got_plain = tok.encode(text, false);
    const std::string decoded = tok.decode(want, false);
    const std::string decoded_skip = tok.decode(want, true);
    EXPECT_EQ(show(got), show(want)) << cases_file << ": encode(" << json(text).dump() << ")";
    EXPECT_EQ(show(got_plain), show(want_plain))
        << cases_file << ": encode without specials of " << json(text).dump();
    EXPECT_EQ(decoded, c.at("decoded").get<std::string>())
        << cases_file << ": decode(ids) of " << json(text).dump();
    EXPECT_EQ(decoded_skip, c.at("decoded_skip_special").get<std::string>())
        << cases_file << ": decode(ids, skip special) of " << json(text).dump();
    if (c.at("decoded_skip_special").get<std::string>() == text) {
      ++*num_lossless;
      EXPECT_EQ(tok.decode(got, true), text) << "round trip of " << json(text).dump();
    }
    passed += got == want && got_plain == want_plain && decoded == c.at("decoded") &&
              decoded_skip == c.at("decoded_skip_special");
  }
  std::printf("[ cases    ] %s: %d/%zu strings match the reference (%d lossless round trips)\n",
              cases_file.c_str(), passed, doc.at("cases").size(), *num_lossless);
  return static_cast<int>(doc.at("cases").size()) - passed;
}

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
