// SentencePiece through libsentencepiece: train a tiny model, then encode and decode with it.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "data/sentencepiece_tokenizer.h"
#include "data/tokenizer.h"

namespace moex::data {
namespace {

namespace fs = std::filesystem;

class DataSentencePiece : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("moex_spm_test_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    std::ofstream out(dir_ / "corpus.txt");
    const char* lines[] = {
        "The quick brown fox jumps over the lazy dog.",
        "In the beginning God created the heaven and the earth.",
        "En el principio creó Dios los cielos y la tierra.",
        "Mixture of experts models route tokens to experts.",
        "Los modelos de mezcla de expertos envían cada token a pocos expertos.",
        "The router picks the top two experts for every token.",
        "El enrutador elige los dos mejores expertos para cada token.",
    };
    for (int rep = 0; rep < 40; ++rep)
      for (const char* l : lines) out << l << " " << rep << "\n";
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(DataSentencePiece, TrainEncodeDecode) {
  for (const char* type : {"unigram", "bpe"}) {
    SentencePieceTrainOptions o;
    o.input = (dir_ / "corpus.txt").string();
    o.model_prefix = (dir_ / type).string();
    o.vocab_size = 330;  // 256 byte pieces + specials + the characters
    o.model_type = type;
    o.character_coverage = 1.0;
    o.byte_fallback = true;
    o.user_defined_symbols = {"<en>", "<es>"};
    train_sentencepiece(o);
    ASSERT_TRUE(fs::exists(dir_ / (std::string(type) + ".model"))) << type;

    const auto tok = open_tokenizer((dir_ / (std::string(type) + ".model")).string());
    EXPECT_EQ(tok->vocab_size(), 330) << type;
    EXPECT_EQ(tok->bos_id(), 1);
    EXPECT_EQ(tok->eos_id(), 2);
    EXPECT_GE(tok->token_to_id("<en>"), 0);
    EXPECT_EQ(tok->token_to_id("definitely not a piece"), -1);
    EXPECT_TRUE(tok->is_special(1));

    for (const std::string text :
         {"The quick brown fox.", "<es> El enrutador elige expertos.", "unseen: ζ 中 😀", ""}) {
      const auto ids = tok->encode(text, true);
      ASSERT_FALSE(ids.empty());
      EXPECT_EQ(ids[0], 1) << "BOS first";
      EXPECT_EQ(tok->encode(text, false).size() + 1, ids.size());
      EXPECT_EQ(tok->decode(ids), text) << type;  // byte_fallback makes it lossless
      if (!text.empty()) {
        EXPECT_EQ(tok->decode(ids, false), "<s>" + text) << type;
      }
    }
    EXPECT_THROW(tok->decode({330}), Error);

    // Control pieces written in the text are those tokens (a chat template writes "<s>" and
    // "</s>"): the text between them is encoded on its own, as a Hugging Face Llama tokenizer
    // does; anything else that looks like one stays text.
    const std::vector<int32_t> fox = tok->encode("The quick brown fox.", false);
    const std::vector<int32_t> dog = tok->encode("lazy dog", false);
    std::vector<int32_t> want = {1};
    want.insert(want.end(), fox.begin(), fox.end());
    want.push_back(2);
    want.insert(want.end(), dog.begin(), dog.end());
    EXPECT_EQ(tok->encode("<s>The quick brown fox.</s>lazy dog", false), want) << type;
    EXPECT_EQ(tok->encode("</s></s>", false), (std::vector<int32_t>{2, 2})) << type;
    std::string many;  // a request's worth of them: each found once, not searched for again
    for (int k = 0; k < 20000; ++k) many += "</s><s>";
    EXPECT_EQ(tok->encode(many, false).size(), 40000u) << type;
    const std::vector<int32_t> plain = tok->encode("<t>", false);
    EXPECT_EQ(std::count(plain.begin(), plain.end(), 1) + std::count(plain.begin(), plain.end(), 2),
              0)
        << type;
    EXPECT_EQ(tok->decode(tok->encode("<s>The quick</s>", false), false), "<s>The quick</s>")
        << type;

    // decode_bytes: the text's bytes, control pieces' text included; a character the model has
    // no piece for goes as byte pieces, each of which is one byte (decode reads it as U+FFFD).
    // (libsentencepiece drops a space before a control piece when it encodes: none here)
    const std::string odd = "unseen: \xE4\xB8\xAD and<s>more";
    const std::vector<int32_t> odd_ids = tok->encode(odd, false);
    EXPECT_EQ(tok->decode_bytes(odd_ids), odd) << type;
    int lone = 0;
    for (const int32_t id : odd_ids)
      if (tok->decode_bytes({id}).size() == 1 &&
          static_cast<unsigned char>(tok->decode_bytes({id})[0]) >= 0x80) {
        EXPECT_EQ(tok->decode({id}), "\xEF\xBF\xBD") << type;
        ++lone;
      }
    EXPECT_EQ(lone, 3) << type;  // the three bytes of U+4E2D
  }
}

TEST_F(DataSentencePiece, TrainErrorsNameTheInput) {
  SentencePieceTrainOptions o;
  o.input = (dir_ / "missing.txt").string();
  o.model_prefix = (dir_ / "m").string();
  o.vocab_size = 100;
  try {
    train_sentencepiece(o);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing.txt"), std::string::npos) << e.what();
  }
  o.input = (dir_ / "corpus.txt").string();
  o.model_type = "wordpiece";
  EXPECT_THROW(train_sentencepiece(o), Error);
}

}  // namespace
}  // namespace moex::data
