// Helpers shared by the subcommands that open a model directory.
#pragma once

#include <memory>
#include <string>

#include "core/tensor.h"
#include "data/tokenizer.h"

namespace moex::cli {

// The tokenizer saved beside a model: tokenizer.json, else the one *.model file; null if none.
std::unique_ptr<data::Tokenizer> open_model_tokenizer(const std::string& model_dir);

// The int32 tensor `input_ids` [B, T] of a safetensors file; errors name the file and the tensor.
Tensor read_input_ids(const std::string& path);

}  // namespace moex::cli
