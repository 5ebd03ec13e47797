#include "train/init_from.h"

#include <filesystem>

#include "core/file_util.h"
#include "core/json_reader.h"
#include "core/logging.h"
#include "data/tokenizer.h"
#include "io/safetensors.h"
#include "model/hf_weights.h"
#include "model/model_io.h"

namespace moex::train {
namespace {

namespace fs = std::filesystem;

bool same_bytes(const std::string& a, const std::string& b) {
  std::error_code ec;
  if (fs::equivalent(a, b, ec)) return true;
  if (fs::file_size(a, ec) != fs::file_size(b, ec) || ec) return false;
  return read_file(a) == read_file(b);
}

}  // namespace

InitFromModel read_init_from(const std::string& dir, const std::string& what) {
  std::error_code ec;
  MOEX_CHECK(fs::is_directory(dir, ec), what, ": ", dir, ": no such directory");
  const fs::path config_path = fs::path(dir) / "config.json";
  MOEX_CHECK(fs::is_regular_file(config_path, ec), what, ": ", config_path.string(),
             " is missing (a model directory: a moex checkpoint or final/, or a Hugging Face "
             "model)");
  MOEX_CHECK(fs::exists(fs::path(dir) / io::kSafetensorsSingleName, ec) ||
                 fs::exists(fs::path(dir) / io::kSafetensorsIndexName, ec),
             what, ": ", dir, " holds no weights (", io::kSafetensorsSingleName, " or ",
             io::kSafetensorsIndexName, ")");
  InitFromModel out;
  try {
    out.config = model::load_model_config(dir);
    const nlohmann::json file =
        parse_json(read_file(config_path.string(), kMaxConfigBytes), config_path.string());
    out.moex = file.is_object() && file.value("model_type", nlohmann::json()) == "moex";
    // A moex directory's model object as saved; a Hugging Face one's in moex's terms.
    out.model_json = out.moex ? file.at("moex_model").dump(2) : out.config.to_json().dump(2);
  } catch (const Error& e) {
    MOEX_THROW(what, ": ", e.message());
  }
  return out;
}

ParamBuffer load_init_from_weights(model::Model& model, const std::string& dir, bool moex) {
  // Both loaders read each whole tensor and keep this rank's part (model::local_part).
  if (moex) return model::load_weights(model, dir);
  return model::load_hf_weights(model, dir);
}

std::vector<std::string> checkpoint_tokenizer_files(const std::string& corpus_tokenizer,
                                                    const std::string& init_from_dir) {
  if (corpus_tokenizer.empty()) return {};
  std::vector<std::string> files = data::tokenizer_files(corpus_tokenizer);
  if (init_from_dir.empty()) return files;
  const std::string own = data::tokenizer_file_in(init_from_dir);
  if (own.empty()) return files;
  if (!same_bytes(own, corpus_tokenizer)) {
    MOEX_WARN("training.init_from ", init_from_dir, " has its own tokenizer (", own,
              "), but the corpus was tokenized with ", corpus_tokenizer,
              ": the model reads ids of another vocabulary; checkpoints carry the corpus's");
    return files;
  }
  // The directory's own files: its generation defaults come along too.
  files = data::tokenizer_files(own);
  const fs::path generation = fs::path(init_from_dir) / "generation_config.json";
  if (fs::is_regular_file(generation)) files.push_back(generation.string());
  return files;
}

}  // namespace moex::train
