#include "infer/model_tokenizer.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/file_util.h"

namespace moex::infer {
namespace {

namespace fs = std::filesystem;

std::string sentencepiece_file(const std::string& model_dir) {
  for (const auto& entry : fs::directory_iterator(model_dir))
    if (entry.path().extension() == ".model") return entry.path().string();
  return "";
}

bool is_unigram_tokenizer_json(const std::string& path) {
  const nlohmann::json j = nlohmann::json::parse(read_file(path), nullptr, false);
  return j.is_object() && j.contains("model") && j["model"].is_object() &&
         j["model"].value("type", "") == "Unigram";
}

}  // namespace

std::string model_tokenizer_path(const std::string& model_dir) {
  if (!fs::is_directory(model_dir)) return "";
  const std::string json_path = model_dir + "/tokenizer.json";
  const std::string spm_path = sentencepiece_file(model_dir);
  if (fs::exists(json_path))
    return !spm_path.empty() && is_unigram_tokenizer_json(json_path) ? spm_path : json_path;
  return spm_path;
}

std::unique_ptr<data::Tokenizer> open_model_tokenizer(const std::string& model_dir) {
  const std::string path = model_tokenizer_path(model_dir);
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
