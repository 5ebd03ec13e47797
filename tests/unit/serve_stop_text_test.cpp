// StopText (serve/stop_text.h): the text a client sees ends right before the first stop string,
// wherever the token boundaries fall, and no part of a stop string is ever released.
#include <gtest/gtest.h>

#include <filesystem>

#include "data/tokenizer.h"
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

}  // namespace
}  // namespace moex::serve
