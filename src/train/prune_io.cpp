#include "train/prune_io.h"

#include <algorithm>
#include <filesystem>
#include <memory>

#include "core/file_util.h"
#include "core/json_reader.h"
#include "data/corpus.h"
#include "data/indexed_dataset.h"
#include "io/atomic_file.h"
#include "model/hf_config.h"
#include "model/hf_weights.h"
#include "model/model_io.h"

namespace moex::train {
namespace {

namespace fs = std::filesystem;

// The written config must describe the pruned model: same blocks, same experts, same size.
void check_describes(const ModelConfig& written, const ModelConfig& pruned,
                     const std::string& what) {
  bool same = written.num_layers == pruned.num_layers &&
              written.num_parameters() == pruned.num_parameters();
  for (size_t i = 0; same && i < pruned.layers.size(); ++i)
    same = written.layers[i].moe == pruned.layers[i].moe &&
           (!pruned.layers[i].moe ||
            written.layers[i].moe_config.num_experts == pruned.layers[i].moe_config.num_experts);
  MOEX_CHECK(same, what, " cannot describe the pruned model (", pruned.num_layers, " layers, ",
             pruned.num_parameters(), " parameters)");
}

}  // namespace

ModelFormat model_dir_format(const std::string& dir) {
  const JsonReader config = JsonReader::from_file(dir + "/config.json");
  return config.get_string("model_type") == "moex" ? ModelFormat::kMoex : ModelFormat::kHf;
}

const char* model_format_name(ModelFormat format) {
  return format == ModelFormat::kMoex ? "moex" : "hf";
}

std::vector<int32_t> dataset_calibration_ids(const std::string& prefix, int64_t num_tokens,
                                             int64_t seq_len, int64_t* batch) {
  MOEX_CHECK(num_tokens > 0, "--calibration-tokens must be > 0 (got ", num_tokens, ")");
  MOEX_CHECK(seq_len > 0, "calibration: seq_len must be > 0");
  auto dataset = std::make_shared<const data::IndexedDataset>(data::IndexedDataset::open(prefix));
  MOEX_CHECK(dataset->num_tokens() > seq_len, prefix, ".bin: ", dataset->num_tokens(),
             " tokens, fewer than one calibration row of ", seq_len + 1);
  data::GPTSampler sampler(dataset, seq_len, 0);
  *batch = std::max<int64_t>(1, num_tokens / seq_len);
  std::vector<int32_t> ids(static_cast<size_t>(*batch * seq_len));
  std::vector<int32_t> sample(static_cast<size_t>(seq_len + 1));
  for (int64_t b = 0; b < *batch; ++b) {
    sampler.next(sample.data());  // seq_len + 1 tokens: the last is a target, not needed here
    std::copy(sample.begin(), sample.end() - 1, ids.begin() + b * seq_len);
  }
  return ids;
}

std::vector<int32_t> corpus_calibration_ids(const std::string& dir, int64_t num_tokens,
                                            int64_t seq_len, int64_t* batch) {
  MOEX_CHECK(num_tokens > 0, "--calibration-tokens must be > 0 (got ", num_tokens, ")");
  const data::CorpusManifest corpus = data::load_corpus_manifest(dir);
  std::vector<const data::CorpusSource*> sources;
  double total = 0;
  for (const data::CorpusSource& s : corpus.sources)
    if (s.train.tokens > seq_len) {
      sources.push_back(&s);
      total += static_cast<double>(s.train.tokens);
    }
  MOEX_CHECK(!sources.empty(), dir, "/corpus.json: no train split holds more than ", seq_len,
             " tokens");
  const int64_t rows = std::max<int64_t>(1, num_tokens / seq_len);
  // Largest remainders: floor shares first, then one more row to the largest fractions.
  std::vector<int64_t> share(sources.size());
  std::vector<std::pair<double, size_t>> remainder;
  int64_t given = 0;
  for (size_t i = 0; i < sources.size(); ++i) {
    const double exact = static_cast<double>(rows) * sources[i]->train.tokens / total;
    share[i] = static_cast<int64_t>(exact);
    given += share[i];
    remainder.emplace_back(exact - static_cast<double>(share[i]), i);
  }
  std::stable_sort(remainder.begin(), remainder.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  for (size_t j = 0; given < rows; ++j, ++given) ++share[remainder[j].second];
  std::vector<int32_t> ids;
  for (size_t i = 0; i < sources.size(); ++i) {
    if (share[i] == 0) continue;
    int64_t got = 0;
    const std::vector<int32_t> part = dataset_calibration_ids(
        (fs::path(dir) / sources[i]->train.prefix).string(), share[i] * seq_len, seq_len, &got);
    ids.insert(ids.end(), part.begin(), part.end());
  }
  *batch = rows;
  return ids;
}

std::string pruned_moex_json(const std::string& model_json, const ModelConfig& pruned) {
  nlohmann::json js = nlohmann::json::parse(model_json);
  js["num_layers"] = pruned.num_layers;
  std::vector<int64_t> dense, experts;
  for (size_t i = 0; i < pruned.layers.size(); ++i) {
    if (pruned.layers[i].moe)
      experts.push_back(pruned.layers[i].moe_config.num_experts);
    else
      dense.push_back(static_cast<int64_t>(i));
  }
  if (experts.empty()) {
    js.erase("moe");  // only dense blocks were kept
  } else {
    // The kept blocks need not follow the source's layer_freq: name the dense ones.
    nlohmann::json& moe = js["moe"];
    moe["layer_freq"] = 1;
    moe["dense_layers"] = dense;
    const bool uniform =
        std::all_of(experts.begin(), experts.end(), [&](int64_t e) { return e == experts[0]; });
    moe["num_experts"] = uniform ? nlohmann::json(experts[0]) : nlohmann::json(experts);
  }
  const std::string text = js.dump(2);
  check_describes(ModelConfig::from_json(JsonReader::from_string(text, "pruned moex config")),
                  pruned, "the pruned moex config");
  return text;
}

nlohmann::json pruned_hf_config(const nlohmann::json& source, const ModelConfig& pruned,
                                const std::vector<int64_t>& layers) {
  // What an export of the pruned model would write (an error if the architecture cannot express
  // it); only the fields that describe layers, experts and the stored dtype are taken from it, so
  // everything else stays exactly as the source had it.
  const nlohmann::json written = model::hf_config_to_json(pruned, pruned.architecture);
  nlohmann::json out = source;
  for (const char* key : {"num_hidden_layers", "mlp_only_layers", "decoder_sparse_step", "dtype"})
    if (written.contains(key)) out[key] = written[key];
  out.erase("torch_dtype");  // "dtype" names the weights written (f32)
  // Every spelling of the expert count the source uses (Qwen3-MoE may carry both, and is read
  // from num_experts first), else the one an export writes.
  bool has_count = false;
  for (const char* key : {"num_experts", "num_local_experts"})
    if (out.contains(key) && !out[key].is_null()) {
      out[key] = written[written.contains("num_experts") ? "num_experts" : "num_local_experts"];
      has_count = true;
    }
  if (!has_count)
    for (const char* key : {"num_experts", "num_local_experts"})
      if (written.contains(key)) out[key] = written[key];
  if (out.contains("layer_types") && out["layer_types"].is_array() &&
      source.contains("num_hidden_layers") &&
      out["layer_types"].size() == source["num_hidden_layers"].get<size_t>()) {
    nlohmann::json kept = nlohmann::json::array();
    for (int64_t i : layers) kept.push_back(source["layer_types"][static_cast<size_t>(i)]);
    out["layer_types"] = kept;
  }
  check_describes(model::hf_config_from_string(out.dump(), "pruned config.json"), pruned,
                  "the pruned config.json");
  return out;
}

void save_pruned_model(const PruneResult& pruned, const std::string& source_dir,
                       const std::string& dir) {
  const std::string config_path = source_dir + "/config.json";
  if (model_dir_format(source_dir) == ModelFormat::kMoex) {
    const JsonReader config = JsonReader::from_file(config_path);
    const std::string json =
        pruned_moex_json(config.get_json_text("moex_model"), pruned.model->config());
    model::save_model(*pruned.model, json, dir);
  } else {
    const nlohmann::json source = parse_json(read_file(config_path), config_path);
    const nlohmann::json config = pruned_hf_config(source, pruned.model->config(), pruned.layers);
    model::save_hf_model(*pruned.model, dir, pruned.model->config().architecture);
    io::write_file_atomic(dir + "/config.json", config.dump(2) + "\n");
  }
  for (const char* name : {"tokenizer.model", "tokenizer.vocab", "tokenizer.json",
                           "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                           "merges.txt", "added_tokens.json", "generation_config.json"})
    if (fs::exists(fs::path(source_dir) / name))
      fs::copy_file(fs::path(source_dir) / name, fs::path(dir) / name);
}

}  // namespace moex::train
