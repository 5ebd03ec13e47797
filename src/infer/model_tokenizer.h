// The tokenizer saved beside a model: tokenizer.json, else the one *.model (SentencePiece) file.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "model/model.h"

namespace moex::infer {

// The tokenizer file of a model directory, "" when it holds none: tokenizer.json, except a
// Unigram one written by `moex export` from the SentencePiece model beside it (moex reads
// tokenizer.json BPE models only), where that .model file is the tokenizer.
std::string model_tokenizer_path(const std::string& model_dir);

// Null when the directory holds no tokenizer.
std::unique_ptr<data::Tokenizer> open_model_tokenizer(const std::string& model_dir);

// Tokens that end generation: the tokenizer's EOS (if any) and the model config's eos_id (if set).
std::vector<int32_t> end_of_sequence_tokens(const model::Model& model,
                                            const data::Tokenizer* tokenizer);

}  // namespace moex::infer
