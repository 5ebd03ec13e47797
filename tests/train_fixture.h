// A synthetic corpus and training config shared by the training tests (unit and mpirun).
#pragma once

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/rng.h"
#include "data/indexed_dataset.h"
#include "dist/communicator.h"

namespace moex::testing {

namespace fs = std::filesystem;

// Two sources of documents whose tokens follow a simple rule (next = prev + 1 mod 40), so a
// model can learn them quickly and the loss must fall.
inline fs::path make_corpus(const fs::path& dir) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  for (const char* src : {"a", "b"}) {
    for (const char* split : {"train", "valid"}) {
      data::IndexedDatasetBuilder builder((dir / (std::string(src) + "." + split)).string(),
                                          data::TokenDType::kU16);
      for (int doc = 0; doc < (split[0] == 't' ? 60 : 6); ++doc) {
        std::vector<int32_t> ids;
        int32_t t = static_cast<int32_t>(philox_u32(src[0], doc, 0) % 40);
        for (int i = 0; i < 50; ++i) ids.push_back(t = (t + (src[0] == 'a' ? 1 : 3)) % 40);
        builder.add_document(ids);
      }
      builder.finish();
    }
  }
  std::ofstream(dir / "tok.model") << "not a real tokenizer; copied into checkpoints";
  std::ofstream(dir / "corpus.json") << R"({"tokenizer": "tok.model", "vocab_size": 40, "sources": [
    {"name": "a", "language": "en", "train": {"prefix": "a.train", "tokens": 3000}, "valid": {"prefix": "a.valid", "tokens": 300}},
    {"name": "b", "language": "es", "train": {"prefix": "b.train", "tokens": 3000}, "valid": {"prefix": "b.valid", "tokens": 300}}]})";
  return dir;
}

// A corpus of one source "a" (language en, vocabulary 40) whose splits `fill` writes: it gets the
// split's name ("train", "valid") and its dataset path prefix (dir/a.<split>), writes the
// datasets there and returns the split's corpus.json fields besides "prefix" ({"tokens": n}, and
// "loss_mask" when it writes one).
inline fs::path one_source_corpus(
    const fs::path& dir,
    const std::function<nlohmann::json(const std::string& split, const fs::path& prefix)>& fill) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  nlohmann::json source = {{"name", "a"}, {"language", "en"}};
  for (const char* split : {"train", "valid"}) {
    const std::string prefix = std::string("a.") + split;
    nlohmann::json fields = fill(split, dir / prefix);
    fields["prefix"] = prefix;
    source[split] = fields;
  }
  std::ofstream(dir / "tok.model") << "stand-in";
  nlohmann::json corpus = {{"tokenizer", "tok.model"}, {"vocab_size", 40}};
  corpus["sources"] = nlohmann::json::array({source});
  std::ofstream(dir / "corpus.json") << corpus.dump();
  return dir;
}

// make_corpus in the temporary directory, under `name` and this process's id.
inline fs::path make_temp_corpus(const std::string& name) {
  return make_corpus(fs::temp_directory_path() / (name + "_" + std::to_string(::getpid())));
}

// Under mpirun pass the group: only its root writes (to a temporary name, then renamed), and every
// rank waits at a barrier until the file is complete, so no rank reads a half-written config.
// extra_moe is appended to the "moe" object, extra_root to the top-level one (e.g. "parallel"),
// extra_model to the "model" object.
// The extras above may repeat a base field to change it: nlohmann keeps the last value of a
// repeated key, so re-dumping the text gives the overridden config with each key once (moex's
// reader refuses repeated keys).
inline std::string overridden(const std::string& json_text) {
  return nlohmann::json::parse(json_text).dump(2);
}

inline fs::path write_config(const fs::path& corpus, const std::string& out_dir,
                             const std::string& extra_training, dist::Communicator* group = nullptr,
                             const std::string& extra_moe = "", const std::string& extra_root = "",
                             const std::string& extra_model = "") {
  const fs::path path =
      corpus / ("config_" + std::to_string(std::hash<std::string>()(out_dir)) + ".json");
  if (group && !group->is_root()) {
    group->barrier();
    return path;
  }
  const fs::path partial = path.string() + ".partial";
  std::ofstream(partial) << overridden(R"({
    "model": {"vocab_size": 40, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
              "max_seq_len": 32, "ffn_size": 48,
              "moe": {"layer_freq": 2, "num_experts": 4, "top_k": 2, "ffn_size": 24, "capacity_factor": 1.0,
                      "jitter_eps": 0.01, "aux_loss_coef": 0.01)" +
                                       extra_moe + "}" + extra_model + R"(},
    "data": {"path": ")" + corpus.string() +
                                       R"(", "seq_len": 16, "temperature": 2.0},
    "optimizer": {"lr": 0.01, "grad_clip": 1.0},
    "schedule": {"warmup_steps": 2},
    "training": {"steps": 12, "micro_batch_size": 4, "grad_accum": 2, "log_every": 1, "eval_every": 6,
                 "eval_batches": 1, "out_dir": ")" +
                                       out_dir + R"(" )" + extra_training + R"(})" + extra_root +
                                       R"(})");
  fs::rename(partial, path);
  if (group) group->barrier();
  return path;
}

inline std::vector<double> losses_of(const std::string& metrics) {
  std::vector<double> out;
  std::ifstream in(metrics);
  std::string line;
  while (std::getline(in, line))
    out.push_back(nlohmann::json::parse(line).at("loss").get<double>());
  return out;
}

}  // namespace moex::testing
