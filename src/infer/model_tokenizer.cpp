#include "infer/model_tokenizer.h"

#include "core/error.h"

namespace moex::infer {

std::unique_ptr<data::Tokenizer> open_model_tokenizer(const std::string& model_dir,
                                                      int64_t model_vocab_size) {
  const std::string path = data::tokenizer_file_in(model_dir);
  if (path.empty()) return nullptr;
  std::unique_ptr<data::Tokenizer> tokenizer = data::open_tokenizer(path);
  // Fewer ids than the model is common (an embedding padded to a multiple of 64); more would give
  // ids the embedding has no row for.
  MOEX_CHECK(tokenizer->vocab_size() <= model_vocab_size, path, ": the tokenizer has ids up to ",
             tokenizer->vocab_size() - 1, ", past the model's vocabulary of ", model_vocab_size,
             " (", model_dir, "/config.json vocab_size): a tokenizer of another model?");
  return tokenizer;
}

std::vector<int32_t> end_of_sequence_tokens(const model::Model& model,
                                            const data::Tokenizer* tokenizer) {
  std::vector<int32_t> out;
  if (tokenizer && tokenizer->eos_id() >= 0) out.push_back(tokenizer->eos_id());
  if (model.config().eos_id >= 0) out.push_back(static_cast<int32_t>(model.config().eos_id));
  return out;
}

}  // namespace moex::infer
