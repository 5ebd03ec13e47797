// Hugging Face tokenizer.json, read natively: BPE with byte fallback (Llama, Mistral, Mixtral)
// and byte-level BPE (GPT-2 family). Malformed files give one moex::Error naming the file and
// the field.
#pragma once

#include <memory>
#include <string>

#include "data/tokenizer.h"

namespace moex::data {

// Reads `path`; bos/eos come from a tokenizer_config.json beside it when there is one.
std::unique_ptr<Tokenizer> load_tokenizer_json(const std::string& path);

// Parses the text of a tokenizer.json; `source` names it in errors. `config_json` is the text
// of tokenizer_config.json, or empty.
std::unique_ptr<Tokenizer> parse_tokenizer_json(const std::string& json_text,
                                                const std::string& source,
                                                const std::string& config_json = "");

}  // namespace moex::data
