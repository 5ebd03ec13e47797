#include "infer/model_tokenizer.h"

namespace moex::infer {

std::unique_ptr<data::Tokenizer> open_model_tokenizer(const std::string& model_dir) {
  const std::string path = data::tokenizer_file_in(model_dir);
  return path.empty() ? nullptr : data::open_tokenizer(path);
}

std::vector<int32_t> end_of_sequence_tokens(const model::Model& model,
                                            const data::Tokenizer* tokenizer) {
  std::vector<int32_t> out;
  if (tokenizer && tokenizer->eos_id() >= 0) out.push_back(tokenizer->eos_id());
  if (model.config().eos_id >= 0) out.push_back(static_cast<int32_t>(model.config().eos_id));
  return out;
}

}  // namespace moex::infer
