// The tokenizer saved beside a model: tokenizer.json, else the one *.model (SentencePiece) file.
#pragma once

#include <memory>
#include <string>

#include "data/tokenizer.h"

namespace moex::infer {

// Null when the directory holds no tokenizer.
std::unique_ptr<data::Tokenizer> open_model_tokenizer(const std::string& model_dir);

}  // namespace moex::infer
