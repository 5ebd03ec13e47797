// Helpers shared by the subcommands that open a model directory.
#pragma once

#include <memory>
#include <string>

#include "data/tokenizer.h"

namespace moex::cli {

// The tokenizer saved beside a model: tokenizer.json, else the one *.model file; null if none.
std::unique_ptr<data::Tokenizer> open_model_tokenizer(const std::string& model_dir);

}  // namespace moex::cli
