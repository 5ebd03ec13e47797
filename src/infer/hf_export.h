// The tokenizer and generation files of a Hugging Face export (`moex export`), written beside
// the config.json and safetensors that model::save_hf_model writes. docs/hf-interop.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/model.h"

namespace moex::infer {

// What a SentencePiece .model file (a serialized sentencepiece ModelProto) holds that a
// tokenizer.json needs. Read with a small protobuf wire-format reader, so no protobuf library
// is needed.
struct SentencePieceModelInfo {
  enum PieceType {
    kNormal = 1,
    kUnknown = 2,
    kControl = 3,
    kUserDefined = 4,
    kUnused = 5,
    kByte = 6
  };
  struct Piece {
    std::string text;
    float score = 0;
    int type = kNormal;
  };
  std::vector<Piece> pieces;
  int model_type = 1;  // 1 unigram, 2 BPE, 3 word, 4 char
  bool byte_fallback = false;
  int32_t unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;
  std::string precompiled_charsmap;  // the normalization rule (nmt_nfkc by default), raw bytes
  bool add_dummy_prefix = true, remove_extra_whitespaces = true;
};

// Errors name the file.
SentencePieceModelInfo read_sentencepiece_model(const std::string& path);

// A tokenizer.json (Hugging Face tokenizers) equivalent to a SentencePiece unigram model, as
// transformers' SpmConverter builds it: the precompiled normalizer, Metaspace, a Unigram model
// with the pieces' scores and byte fallback, control and user-defined pieces as added tokens,
// BOS prepended by the post-processor. Throws for a model that is not unigram.
std::string sentencepiece_tokenizer_json(const SentencePieceModelInfo& spm);

// Writes into `out_dir` (where save_hf_model has written config.json) the tokenizer found in
// `model_dir` and the files transformers reads beside it:
//   - SentencePiece unigram model: tokenizer.model, tokenizer.json and tokenizer_config.json
//     (tokenizer_class PreTrainedTokenizerFast, which loads tokenizer.json as written);
//     any other SentencePiece model: tokenizer.model and tokenizer_config.json (LlamaTokenizer);
//   - tokenizer.json: copied, with its tokenizer_config.json (written when there is none);
//   - generation_config.json: bos_token_id, eos_token_id (every end-of-sequence token),
//     pad_token_id when the tokenizer has one;
//   - config.json's bos_token_id / eos_token_id are filled from the tokenizer when the model
//     config leaves them unset.
// Every file is written atomically. A model directory without a tokenizer gets only
// generation_config.json (from the model config's ids).
void save_hf_tokenizer_files(const model::Model& model, const std::string& model_dir,
                             const std::string& out_dir);

}  // namespace moex::infer
