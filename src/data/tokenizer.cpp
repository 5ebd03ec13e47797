#include "data/tokenizer.h"

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "data/sentencepiece_tokenizer.h"
#include "data/tokenizer_json.h"

namespace moex::data {

std::unique_ptr<Tokenizer> open_tokenizer(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    for (const char* name : {"tokenizer.json", "tokenizer.model"}) {
      const fs::path candidate = fs::path(path) / name;
      if (fs::exists(candidate, ec)) return open_tokenizer(candidate.string());
    }
    MOEX_THROW(path, ": directory holds neither tokenizer.json nor tokenizer.model");
  }
  std::ifstream in(path, std::ios::binary);
  MOEX_CHECK(in.good(), path, ": cannot open tokenizer file");
  char c = 0;
  while (in.get(c) && (c == ' ' || c == '\n' || c == '\r' || c == '\t')) {
  }
  if (in && c == '{') return load_tokenizer_json(path);
  return SentencePieceTokenizer::open(path);
}

}  // namespace moex::data
