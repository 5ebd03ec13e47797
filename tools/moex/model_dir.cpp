#include "model_dir.h"

#include <filesystem>

namespace moex::cli {

std::unique_ptr<data::Tokenizer> open_model_tokenizer(const std::string& model_dir) {
  namespace fs = std::filesystem;
  if (fs::exists(model_dir + "/tokenizer.json"))
    return data::open_tokenizer(model_dir + "/tokenizer.json");
  for (const auto& entry : fs::directory_iterator(model_dir))
    if (entry.path().extension() == ".model") return data::open_tokenizer(entry.path().string());
  return nullptr;
}

}  // namespace moex::cli
