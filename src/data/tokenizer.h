// The Tokenizer interface and the factory that opens a tokenizer file by its type:
// a Hugging Face tokenizer.json (native BPE) or a SentencePiece .model (libsentencepiece).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace moex::data {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Text -> ids. With `add_special_tokens` the tokenizer's own rule adds BOS/EOS (the
  // post-processor of a tokenizer.json; BOS for SentencePiece). Special tokens written in the
  // text ("<s>", "<|endoftext|>") are matched before the model runs.
  virtual std::vector<int32_t> encode(std::string_view text,
                                      bool add_special_tokens = true) const = 0;

  // Ids -> text. An id outside the vocabulary is an error.
  virtual std::string decode(const std::vector<int32_t>& ids,
                             bool skip_special_tokens = true) const = 0;
  // The bytes the ids stand for, special tokens' text included, with nothing replaced: where
  // decode writes U+FFFD for tokens that hold part of a UTF-8 character, these are its bytes
  // (what the OpenAI API's logprobs "bytes" report). An id outside the vocabulary is an error.
  virtual std::string decode_bytes(const std::vector<int32_t>& ids) const = 0;

  virtual int64_t vocab_size() const = 0;  // 1 + the largest id
  virtual int32_t bos_id() const = 0;      // -1 when the tokenizer has none
  virtual int32_t eos_id() const = 0;      // -1 when the tokenizer has none
  virtual int32_t token_to_id(const std::string& token) const = 0;  // -1 when absent
  virtual std::string id_to_token(int32_t id) const = 0;            // error when absent
  virtual bool is_special(int32_t id) const = 0;  // BOS/EOS/control tokens that decode skips
};

// The tokenizer file of a directory (a model's, or a tokenizer's), "" when it holds none:
// tokenizer.json, except a Unigram one written by `moex export` from the SentencePiece model
// beside it (moex reads tokenizer.json BPE models only), where that .model file is the tokenizer;
// else the directory's one *.model file.
std::string tokenizer_file_in(const std::string& dir);

// The tokenizer file and those of the files beside it that shape it or how it is served
// (tokenizer_config.json: BOS/EOS and the chat template; special_tokens_map.json,
// added_tokens.json) which exist: what corpora and checkpoints carry of a tokenizer.
std::vector<std::string> tokenizer_files(const std::string& tokenizer_path);
// Copies each file into the directory `dir`, replacing files of the same names.
void copy_files_into(const std::vector<std::string>& files, const std::string& dir);

// Opens `path` by type: a file whose content starts with '{' (tokenizer.json) is read as a
// Hugging Face tokenizer, anything else as a SentencePiece model. A directory opens its
// tokenizer_file_in. Errors name the file and, for JSON, the field.
std::unique_ptr<Tokenizer> open_tokenizer(const std::string& path);

}  // namespace moex::data
