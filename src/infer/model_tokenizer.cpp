#include "infer/model_tokenizer.h"

#include <filesystem>

namespace moex::infer {

std::unique_ptr<data::Tokenizer> open_model_tokenizer(const std::string& model_dir) {
  namespace fs = std::filesystem;
  if (fs::exists(model_dir + "/tokenizer.json"))
    return data::open_tokenizer(model_dir + "/tokenizer.json");
  if (!fs::is_directory(model_dir)) return nullptr;
  for (const auto& entry : fs::directory_iterator(model_dir))
    if (entry.path().extension() == ".model") return data::open_tokenizer(entry.path().string());
  return nullptr;
}

std::vector<int32_t> end_of_sequence_tokens(const model::Model& model,
                                            const data::Tokenizer* tokenizer) {
  std::vector<int32_t> out;
  if (tokenizer && tokenizer->eos_id() >= 0) out.push_back(tokenizer->eos_id());
  if (model.config().eos_id >= 0) out.push_back(static_cast<int32_t>(model.config().eos_id));
  return out;
}

}  // namespace moex::infer
