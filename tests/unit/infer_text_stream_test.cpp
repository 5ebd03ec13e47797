// Streaming detokenisation after a prompt (infer/text_stream.h), with two real tokenizers that
// mark word starts with "▁": a SentencePiece BPE model trained here (libsentencepiece decodes) and
// the Llama 2 tokenizer.json fixture (moex's own BPE decoder). The streamed text must equal
// decode(prompt + generated) with decode(prompt) removed from its front, token by token.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "data/sentencepiece_tokenizer.h"
#include "data/tokenizer.h"
#include "infer/text_stream.h"

namespace moex::infer {
namespace {

namespace fs = std::filesystem;

const std::string kReplacement = "\xEF\xBF\xBD";  // U+FFFD: what an incomplete character decodes to

// A SentencePiece BPE model with byte fallback (as Llama's), trained on a few lines so that
// "system" and "free" are whole "▁" pieces and "🦀", never seen, falls back to its four bytes.
class SentencePieceModel {
 public:
  SentencePieceModel() {
    dir_ = fs::temp_directory_path() / ("moex_text_stream_test_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    {
      std::ofstream out(dir_ / "corpus.txt");
      const char* lines[] = {
          "The Debian system is a free operating system.",
          "Debian is a free system and the system is free software.",
          "A free operating system for the system administrator.",
          "El sistema Debian es un sistema operativo libre.",
      };
      for (int rep = 0; rep < 30; ++rep)
        for (const char* l : lines) out << l << "\n";
    }
    data::SentencePieceTrainOptions o;
    o.input = (dir_ / "corpus.txt").string();
    o.model_prefix = (dir_ / "bpe").string();
    o.vocab_size = 320;  // 256 byte pieces, 3 specials, the characters and some merges
    o.model_type = "bpe";
    o.character_coverage = 1.0;
    o.byte_fallback = true;
    data::train_sentencepiece(o);
    tokenizer_ = data::open_tokenizer((dir_ / "bpe.model").string());
  }
  ~SentencePieceModel() { fs::remove_all(dir_); }
  const data::Tokenizer& tokenizer() const { return *tokenizer_; }

 private:
  fs::path dir_;
  std::unique_ptr<data::Tokenizer> tokenizer_;
};

std::unique_ptr<data::Tokenizer> llama2() {
  return data::open_tokenizer(std::string(MOEX_SOURCE_DIR) +
                              "/tests/fixtures/tokenizers/llama2/tokenizer.json");
}

// Pushes `generated` one id at a time; returns every piece, then finish()'s remainder last.
std::vector<std::string> stream(TextStream& s, const std::vector<int32_t>& generated) {
  std::vector<std::string> pieces;
  for (int32_t id : generated) pieces.push_back(s.push(id));
  pieces.push_back(s.finish());
  return pieces;
}

std::string joined(const std::vector<std::string>& pieces) {
  std::string out;
  for (const std::string& p : pieces) out += p;
  return out;
}

std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// The prompt "The Debian system" then generated "is a free 🦀 system": the generated ids alone
// decode without the space before "is" (the first "▁" is dropped at the start of a decode), so
// printing them after the prompt would run the words together.
void check_word_boundary_and_bytes(const data::Tokenizer& tok, const std::string& name) {
  const std::vector<int32_t> prompt = tok.encode("The Debian system", true);
  const std::vector<int32_t> generated = tok.encode("is a free \xF0\x9F\xA6\x80 system", false);
  ASSERT_EQ(tok.decode(prompt), "The Debian system") << name;
  ASSERT_EQ(tok.decode(generated).rfind("is a free", 0), 0u) << name << ": no leading space alone";
  for (const std::string byte : {"<0xF0>", "<0x9F>", "<0xA6>", "<0x80>"})
    ASSERT_GE(tok.token_to_id(byte), 0) << name << ": " << byte;

  TextStream s(tok, prompt);
  EXPECT_EQ(s.prompt_text(), "The Debian system") << name;
  const std::vector<std::string> pieces = stream(s, generated);
  const std::string want = " is a free \xF0\x9F\xA6\x80 system";
  const std::string full = tok.decode(concat(prompt, generated));
  ASSERT_EQ(full, "The Debian system" + want) << name;
  EXPECT_EQ(joined(pieces), full.substr(tok.decode(prompt).size())) << name;
  EXPECT_EQ(joined(pieces), want) << name;
  EXPECT_EQ(s.generated_text(), want) << name;
  EXPECT_EQ(pieces.front().substr(0, 1), " ")
      << name << ": the first piece keeps its space, got '" << pieces.front() << "'";
  EXPECT_EQ(pieces.back(), "") << name << ": nothing left for finish()";

  // Token by token: each piece is what decoding one more id adds, and the emoji's first three
  // byte tokens add nothing (never a U+FFFD) until its fourth completes it.
  int empty_pieces = 0;
  for (size_t i = 0; i < generated.size(); ++i) {
    const std::vector<int32_t> after(generated.begin(), generated.begin() + i + 1);
    EXPECT_EQ(pieces[i].find(kReplacement), std::string::npos) << name << " piece " << i;
    if (pieces[i].empty()) {
      ++empty_pieces;
      continue;
    }
    // All the pieces up to i together are the decode of the prompt and generated[0..i].
    std::string upto;
    for (size_t j = 0; j <= i; ++j) upto += pieces[j];
    EXPECT_EQ(tok.decode(prompt) + upto, tok.decode(concat(prompt, after))) << name << " at " << i;
  }
  EXPECT_EQ(empty_pieces, 3) << name << ": the emoji's first three bytes wait";
}

TEST(InferTextStream, SentencePieceWordBoundaryAfterThePrompt) {
  const SentencePieceModel spm;
  check_word_boundary_and_bytes(spm.tokenizer(), "sentencepiece bpe");
}

TEST(InferTextStream, Llama2TokenizerJsonWordBoundaryAfterThePrompt) {
  const auto tok = llama2();
  check_word_boundary_and_bytes(*tok, "llama2 tokenizer.json");
}

TEST(InferTextStream, SpecialTokensAddNoText) {
  const auto tok = llama2();
  const std::vector<int32_t> prompt = tok->encode("Hello", true);
  TextStream s(*tok, prompt);
  const std::vector<int32_t> world = tok->encode("world", false);
  std::vector<int32_t> generated = world;
  generated.push_back(tok->eos_id());
  const std::vector<std::string> pieces = stream(s, generated);
  EXPECT_EQ(joined(pieces), " world");
  EXPECT_EQ(pieces[pieces.size() - 2], "") << "EOS decodes to nothing";
}

TEST(InferTextStream, FinishReturnsAnIncompleteCharacterAtTheEnd) {
  // Generation stopped after two of the emoji's four bytes: push() held them back, finish()
  // returns what decode(prompt + generated) has beyond what was returned.
  const auto tok = llama2();
  const std::vector<int32_t> prompt = tok->encode("Hi", true);
  const std::vector<int32_t> generated = {tok->token_to_id("▁a"), tok->token_to_id("<0xF0>"),
                                          tok->token_to_id("<0x9F>")};
  for (int32_t id : generated) ASSERT_GE(id, 0);
  TextStream s(*tok, prompt);
  EXPECT_EQ(s.push(generated[0]), " a");
  EXPECT_EQ(s.push(generated[1]), "");
  EXPECT_EQ(s.push(generated[2]), "");
  const std::string rest = s.finish();
  const std::string full = tok->decode(concat(prompt, generated));
  EXPECT_EQ(" a" + rest, full.substr(std::string("Hi").size()));
  EXPECT_NE(rest.find(kReplacement), std::string::npos) << "the incomplete bytes decode as U+FFFD";
  EXPECT_EQ(s.finish(), "") << "nothing is returned twice";
}

TEST(InferTextStream, EmptyGenerationAddsNothing) {
  const auto tok = llama2();
  TextStream s(*tok, tok->encode("The Debian system", true));
  EXPECT_EQ(s.finish(), "");
  EXPECT_EQ(s.generated_text(), "");
}

}  // namespace
}  // namespace moex::infer
