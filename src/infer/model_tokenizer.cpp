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

}  // namespace moex::infer
