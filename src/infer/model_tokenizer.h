// The tokenizer saved beside a model (data::tokenizer_file_in), and the tokens that end generation.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "model/model.h"

namespace moex::infer {

// The tokenizer of a model directory (data::tokenizer_file_in); null when it holds none. A
// tokenizer with ids past the model's vocabulary (another model's) is an error naming both files.
std::unique_ptr<data::Tokenizer> open_model_tokenizer(const std::string& model_dir,
                                                      int64_t model_vocab_size);

// Tokens that end generation: the tokenizer's EOS (if any) and the model config's eos_id (if set).
std::vector<int32_t> end_of_sequence_tokens(const model::Model& model,
                                            const data::Tokenizer* tokenizer);

}  // namespace moex::infer
