#include "data/tokenizer.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file_util.h"
#include "data/sentencepiece_tokenizer.h"
#include "data/tokenizer_json.h"

namespace moex::data {

namespace {

namespace fs = std::filesystem;

std::string sentencepiece_file(const std::string& dir) {
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().extension() == ".model") return entry.path().string();
  return "";
}

bool is_unigram_tokenizer_json(const std::string& path) {
  const nlohmann::json j = nlohmann::json::parse(read_file(path), nullptr, false);
  // A "type" of another kind reads as not Unigram (json::value would throw a type_error).
  return j.is_object() && j.contains("model") && j["model"].is_object() &&
         j["model"].contains("type") && j["model"]["type"] == "Unigram";
}

}  // namespace

std::vector<std::string> tokenizer_files(const std::string& tokenizer_path) {
  namespace fs = std::filesystem;
  std::vector<std::string> files = {tokenizer_path};
  const fs::path beside = fs::path(tokenizer_path).parent_path();
  for (const char* name : {"tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"})
    if (fs::is_regular_file(beside / name)) files.push_back((beside / name).string());
  return files;
}

void copy_files_into(const std::vector<std::string>& files, const std::string& dir) {
  namespace fs = std::filesystem;
  for (const std::string& file : files)
    fs::copy_file(file, fs::path(dir) / fs::path(file).filename(),
                  fs::copy_options::overwrite_existing);
}

std::string tokenizer_file_in(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return "";
  const std::string json_path = (fs::path(dir) / "tokenizer.json").string();
  const std::string spm_path = sentencepiece_file(dir);
  if (fs::exists(json_path, ec))
    return !spm_path.empty() && is_unigram_tokenizer_json(json_path) ? spm_path : json_path;
  return spm_path;
}

std::unique_ptr<Tokenizer> open_tokenizer(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    const std::string file = tokenizer_file_in(path);
    MOEX_CHECK(!file.empty(), path, ": directory holds neither tokenizer.json nor a *.model file");
    return open_tokenizer(file);
  }
  std::ifstream in(path, std::ios::binary);
  MOEX_CHECK(in.good(), path, ": cannot open tokenizer file");
  // A JSON file may start with a UTF-8 byte order mark and white space; a SentencePiece model is
  // a protobuf, whose first byte is never '{' or the mark's 0xEF.
  char c = 0;
  while (in.get(c) && (c == ' ' || c == '\n' || c == '\r' || c == '\t')) {
  }
  if (in && (c == '{' || static_cast<unsigned char>(c) == 0xEF)) return load_tokenizer_json(path);
  return SentencePieceTokenizer::open(path);
}

}  // namespace moex::data
