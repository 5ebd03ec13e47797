// SentencePiece .model files through libsentencepiece, and training new ones.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "data/tokenizer.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace moex::data {

class SentencePieceTokenizer : public Tokenizer {
 public:
  static std::unique_ptr<SentencePieceTokenizer> open(const std::string& model_path);
  ~SentencePieceTokenizer() override;

  // add_special_tokens adds BOS (when the model has one), as Llama's SentencePiece tokenizer does.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const override;
  std::string decode(const std::vector<int32_t>& ids,
                     bool skip_special_tokens = true) const override;
  std::string decode_bytes(const std::vector<int32_t>& ids) const override;
  int64_t vocab_size() const override;
  int32_t bos_id() const override;
  int32_t eos_id() const override;
  int32_t token_to_id(const std::string& token) const override;
  std::string id_to_token(int32_t id) const override;
  bool is_special(int32_t id) const override;

 private:
  SentencePieceTokenizer(std::unique_ptr<sentencepiece::SentencePieceProcessor> processor,
                         std::string path);
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::string path_;
  // The control pieces with text ("<s>", "</s>"), longest first: encode matches them in text.
  std::vector<std::pair<std::string, int32_t>> controls_;
};

struct SentencePieceTrainOptions {
  std::string input;         // text file, one sentence (or paragraph) per line
  std::string model_prefix;  // writes <prefix>.model and <prefix>.vocab
  int vocab_size = 8000;
  std::string model_type = "unigram";  // unigram, bpe, char, word
  double character_coverage = 0.9995;
  bool byte_fallback = false;       // unknown chars as <0xNN> pieces (Llama style)
  int64_t input_sentence_size = 0;  // sample this many lines (0: all)
  int num_threads = 1;
  int32_t unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;
  std::vector<std::string> user_defined_symbols;  // e.g. language tags "<en>", "<es>"
  bool quiet = true;                              // silence the trainer's log lines
};

// Trains a model with sentencepiece::SentencePieceTrainer::Train. Errors name the input file.
void train_sentencepiece(const SentencePieceTrainOptions& options);

}  // namespace moex::data
