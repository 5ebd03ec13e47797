#include "model_dir.h"

#include <filesystem>

#include "io/safetensors.h"

namespace moex::cli {

std::unique_ptr<data::Tokenizer> open_model_tokenizer(const std::string& model_dir) {
  namespace fs = std::filesystem;
  if (fs::exists(model_dir + "/tokenizer.json"))
    return data::open_tokenizer(model_dir + "/tokenizer.json");
  for (const auto& entry : fs::directory_iterator(model_dir))
    if (entry.path().extension() == ".model") return data::open_tokenizer(entry.path().string());
  return nullptr;
}

Tensor read_input_ids(const std::string& path) {
  const auto file = io::SafetensorsFile::open(path);
  MOEX_CHECK(file.contains("input_ids"), path, ": no tensor 'input_ids'");
  Tensor ids = file.copy("input_ids");
  MOEX_CHECK(ids.dtype() == DType::kI32 && ids.ndim() == 2 && ids.dim(1) > 0, path,
             ": input_ids must be int32 [B, T] with T > 0, got ", dtype_name(ids.dtype()), " ",
             ids.shape().str());
  return ids;
}

}  // namespace moex::cli
