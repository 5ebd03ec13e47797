// Fuzzing of the configs read from outside (docs/fuzzing.md): training configs (configs/*.json),
// Hugging Face model directories (config.json, loaded as model::load_model and the CLI load
// them) and moex model directories. Seeded mutations must load or end in moex::Error.
#include <gtest/gtest.h>

#include "core/json_reader.h"
#include "fuzz_harness.h"
#include "model/hf_config.h"
#include "model/model_io.h"
#include "train/train_config.h"

namespace moex {
namespace {

namespace fs = std::filesystem;
using fuzz::Rng;

// Models above this many parameters are parsed and validated but not built: a valid config may
// describe a model far larger than this machine's memory, which is not a defect of the reader.
constexpr int64_t kMaxBuiltParameters = 4'000'000;

// What load_model does with <dir>/config.json before allocating: the config alone.
ModelConfig read_model_config(const std::string& config_path) {
  const JsonReader config = JsonReader::from_file(config_path);
  if (config.get_string("model_type") != "moex") return model::hf_config_from_file(config_path);
  return ModelConfig::from_json(config.child("moex_model"));
}

// Reads the config; builds and loads the model (model::load_model) when it is small enough.
void load_model_dir(const fs::path& dir, fuzz::Stats* stats) {
  const ModelConfig config = read_model_config((dir / "config.json").string());
  if (config.num_parameters() > kMaxBuiltParameters) {
    ++stats->skipped;
    return;
  }
  model::load_model(dir.string());
}

// "mixtral" for tests/fixtures/hf/mixtral/model, "moex" for the moex seed.
std::string seed_name(const fs::path& seed_dir) {
  return seed_dir.filename() == "model" ? seed_dir.parent_path().filename().string()
                                        : seed_dir.filename().string();
}

// A model directory whose weights are the seed's (linked) and whose config.json is `config`.
fs::path model_case_dir(const std::string& target, const fs::path& seed_dir,
                        const std::string& config) {
  const fs::path dir = fuzz::scratch_dir(target) / seed_name(seed_dir);
  fs::create_directories(dir);
  if (!fs::exists(dir / "config.json")) {
    for (const auto& e : fs::directory_iterator(seed_dir))
      if (e.path().filename() != "config.json")
        fs::create_symlink(e.path(), dir / e.path().filename());
  }
  fuzz::write_bytes(dir / "config.json", config);
  return dir;
}

// The model directories the fuzzer starts from: the four HF fixtures and a small moex model.
std::vector<fs::path> model_seed_dirs() {
  std::vector<fs::path> dirs;
  for (const char* arch : {"mixtral", "olmoe", "qwen2_moe", "qwen3_moe"})
    dirs.push_back(fs::path(MOEX_SOURCE_DIR) / "tests/fixtures/hf" / arch / "model");
  const fs::path moex_dir = fuzz::scratch_dir("model_seeds") / "moex";
  fs::create_directories(moex_dir);
  const std::string model_json = R"({
    "vocab_size": 96, "hidden_size": 32, "num_layers": 3, "num_heads": 4, "num_kv_heads": 2,
    "max_seq_len": 64, "ffn_size": 48, "positions": "rope", "norm": "rmsnorm",
    "activation": "swiglu", "qk_norm": "per_head", "tie_embeddings": false,
    "moe": {"layer_freq": 1, "num_experts": [4, 6], "top_k": 2, "ffn_size": 16,
            "renormalize": true, "capacity_factor": 1.25, "shared_ffn_size": 8,
            "shared_gate": true, "dense_layers": [1], "aux_loss_coef": 0.01}})";
  const ModelConfig config =
      ModelConfig::from_json(JsonReader::from_string(model_json, "seed.json"));
  model::Model m(config);
  m.init_weights(3);
  model::save_model(m, model_json, moex_dir.string());
  dirs.push_back(moex_dir);
  return dirs;
}

TEST(FuzzModelConfig, MutatedModelDirectoriesLoadOrFailWithMoexError) {
  const std::string target = "model_config";
  const std::vector<fs::path> seeds = model_seed_dirs();
  fuzz::Stats stats;
  for (const fs::path& seed : seeds) ASSERT_NO_THROW(model::load_model(seed.string())) << seed;
  // Corpus: <seed>__<name>.json, a config.json for the seed directory named before "__".
  size_t corpus_cases = 0;
  for (const fs::path& f : fuzz::corpus(target)) {
    ++corpus_cases;
    const std::string name = f.filename().string();
    const std::string wanted = name.substr(0, name.find("__"));
    const auto seed = std::find_if(seeds.begin(), seeds.end(),
                                   [&](const fs::path& p) { return seed_name(p) == wanted; });
    ASSERT_NE(seed, seeds.end()) << name << ": no seed directory " << wanted;
    const std::string config = fuzz::read_bytes(f);
    const fs::path dir = model_case_dir(target, *seed, config);
    fuzz::run_case(
        target, name, config, [&] { load_model_dir(dir, &stats); }, &stats);
  }
  fuzz::expect_corpus_rejected(target, corpus_cases, stats);
  const int64_t n = fuzz::iterations(600);
  for (int64_t i = 0; i < n; ++i) {
    Rng rng = fuzz::case_rng(target, i);
    const fs::path& seed = rng.pick(seeds);
    const std::string config = fuzz::mutate(fuzz::read_bytes(seed / "config.json"), rng, true);
    const fs::path dir = model_case_dir(target, seed, config);
    fuzz::run_case(
        target, seed_name(seed) + "__iter" + std::to_string(i) + ".json", config,
        [&] { load_model_dir(dir, &stats); }, &stats);
  }
  fuzz::report(target, stats);
  EXPECT_GT(stats.errors, 0);
  EXPECT_GT(stats.loaded, 0);
}

TEST(FuzzTrainConfig, MutatedConfigsLoadOrFailWithMoexError) {
  const std::string target = "train_config";
  const fs::path path = fuzz::scratch_dir(target) / "config.json";
  fuzz::Stats stats;
  auto load = [&] { train::TrainConfig::from_file(path.string()); };
  size_t corpus_cases = 0;
  for (const fs::path& f : fuzz::corpus(target)) {
    ++corpus_cases;
    const std::string text = fuzz::read_bytes(f);
    fuzz::write_bytes(path, text);
    fuzz::run_case(target, f.filename().string(), text, load, &stats);
  }
  fuzz::expect_corpus_rejected(target, corpus_cases, stats);
  std::vector<std::string> seeds;
  for (const auto& e : fs::directory_iterator(fs::path(MOEX_SOURCE_DIR) / "configs"))
    if (e.path().extension() == ".json") seeds.push_back(fuzz::read_bytes(e.path()));
  std::sort(seeds.begin(), seeds.end());
  ASSERT_FALSE(seeds.empty());
  for (const std::string& s : seeds) {
    fuzz::write_bytes(path, s);
    ASSERT_NO_THROW(load());
  }
  const int64_t n = fuzz::iterations(800);
  for (int64_t i = 0; i < n; ++i) {
    Rng rng = fuzz::case_rng(target, i);
    const std::string text = fuzz::mutate(rng.pick(seeds), rng, true);
    fuzz::write_bytes(path, text);
    fuzz::run_case(target, "iter" + std::to_string(i) + ".json", text, load, &stats);
  }
  fuzz::report(target, stats);
  EXPECT_GT(stats.errors, 0);
  EXPECT_GT(stats.loaded, 0);
}

}  // namespace
}  // namespace moex
