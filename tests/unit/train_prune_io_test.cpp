// Writing pruned models (train/prune_io.h): a moex directory and Hugging Face directories
// (Mixtral; Qwen3-MoE with per-layer lists and both expert-count spellings) load back into the
// same logits as the pruned model in memory, with config fields describing the kept layers and
// experts; dataset calibration rows are windows of the token stream.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <set>

#include "core/file_util.h"
#include "core/json_reader.h"
#include "core/rng.h"
#include "data/indexed_dataset.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "model/hf_config.h"
#include "model/hf_weights.h"
#include "model/model_io.h"
#include "model_probe.h"
#include "temp_path.h"
#include "train/prune_io.h"

namespace moex::train {
namespace {

using testing::model_logits;
using testing::random_ids;
using testing::TempDir;

namespace fs = std::filesystem;

// Prunes the model in `src` by `spec`, writes it to `out`, and checks that it loads back into
// the same logits.
PruneResult prune_and_reload(const std::string& src, const std::string& out,
                             const PruneSpec& spec) {
  auto m = model::load_model(src);
  const std::vector<int32_t> calib = random_ids(2 * 16, m->config().vocab_size, 21);
  const ExpertLoads scores = calibration_scores(*m, calib, 2, 16, spec.rank_by);
  PruneResult p = prune_model(*m, scores, spec);
  fs::create_directories(out);
  save_pruned_model(p, src, out);
  auto back = model::load_model(out);
  const std::vector<int32_t> ids = random_ids(2 * 10, m->config().vocab_size, 22);
  const std::vector<float> a = model_logits(*p.model, ids, 2), b = model_logits(*back, ids, 2);
  double diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff = std::max(diff, std::fabs(double(a[i]) - b[i]));
  EXPECT_LT(diff, 1e-6) << out;
  return p;
}

TEST(PruneIo, MoexDirectoryKeepsItsFormat) {
  const std::string json = R"({
    "vocab_size": 50, "hidden_size": 16, "num_layers": 3, "num_heads": 2, "max_seq_len": 32,
    "ffn_size": 24, "init_std": 0.3,
    "moe": {"layer_freq": 2, "num_experts": 4, "top_k": 2, "ffn_size": 8, "dropless": true}})";
  TempDir tmp("moex_prune_io_moex");
  model::Model m(ModelConfig::from_json(JsonReader::from_string(json, "src")));
  m.init_weights(3);
  fs::create_directories(tmp.sub("src"));
  model::save_model(m, json, tmp.sub("src"));
  io::write_file_atomic(tmp.sub("src") + "/tokenizer.json", "{}");
  PruneSpec spec;
  spec.keep_layers = {1, 2};  // MoE then dense: not layer_freq 2 any more
  spec.keep_experts = 3;
  prune_and_reload(tmp.sub("src"), tmp.sub("out"), spec);
  const JsonReader config = JsonReader::from_file(tmp.sub("out") + "/config.json");
  EXPECT_EQ(model_dir_format(tmp.sub("out")), ModelFormat::kMoex);
  const ModelConfig c = ModelConfig::from_json(config.child("moex_model"));
  ASSERT_EQ(c.num_layers, 2);
  EXPECT_TRUE(c.layers[0].moe);
  EXPECT_EQ(c.layers[0].moe_config.num_experts, 3);
  EXPECT_FALSE(c.layers[1].moe);
  EXPECT_TRUE(fs::exists(tmp.sub("out") + "/tokenizer.json"));
}

TEST(PruneIo, MixtralDirectoryStaysMixtral) {
  const std::string json = R"({
    "vocab_size": 50, "hidden_size": 16, "num_layers": 3, "num_heads": 4, "num_kv_heads": 2,
    "max_seq_len": 32, "ffn_size": 8, "init_std": 0.3,
    "moe": {"num_experts": 4, "top_k": 2, "ffn_size": 8, "renormalize": true, "dropless": true,
            "aux_loss_type": "mixtral"}})";
  TempDir tmp("moex_prune_io_mixtral");
  model::Model m(ModelConfig::from_json(JsonReader::from_string(json, "src")));
  m.init_weights(4);
  model::save_hf_model(m, tmp.sub("src"), "MixtralForCausalLM");
  PruneSpec spec;
  spec.keep_layers = {0, 2};
  spec.keep_experts = 2;
  spec.rank_by = RankBy::kGateMass;
  prune_and_reload(tmp.sub("src"), tmp.sub("out"), spec);
  const nlohmann::json c = nlohmann::json::parse(read_file(tmp.sub("out") + "/config.json"));
  EXPECT_EQ(c["architectures"][0], "MixtralForCausalLM");
  EXPECT_EQ(c["num_hidden_layers"], 2);
  EXPECT_EQ(c["num_local_experts"], 2);
  EXPECT_EQ(c["num_experts_per_tok"], 2);
  EXPECT_EQ(model_dir_format(tmp.sub("out")), ModelFormat::kHf);
  // Per-expert tensors as save_pretrained writes them: experts 0 and 1 only.
  const io::SafetensorsCheckpoint ck = io::SafetensorsCheckpoint::open(tmp.sub("out"));
  EXPECT_TRUE(ck.contains("model.layers.1.block_sparse_moe.experts.1.w1.weight"));
  EXPECT_FALSE(ck.contains("model.layers.1.block_sparse_moe.experts.2.w1.weight"));
  EXPECT_FALSE(ck.contains("model.layers.2.input_layernorm.weight"));
  EXPECT_EQ(ck.entry("model.layers.0.block_sparse_moe.gate.weight").shape[0], 2);
}

// A Qwen3-MoE config.json as transformers 4.x wrote it (num_experts beside num_local_experts, a
// per-layer layer_types list, torch_dtype) with MoE on every second layer.
const char* kQwen3 = R"({
  "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": 50,
  "hidden_size": 16, "intermediate_size": 20, "moe_intermediate_size": 8,
  "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 4,
  "max_position_embeddings": 32, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
  "num_experts_per_tok": 2, "num_experts": 4, "num_local_experts": 4, "norm_topk_prob": true,
  "decoder_sparse_step": 2, "mlp_only_layers": [], "use_sliding_window": false,
  "sliding_window": null, "max_window_layers": 4,
  "layer_types": ["full_attention", "full_attention", "full_attention", "full_attention"],
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "attention_bias": false,
  "router_aux_loss_coef": 0.001, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2})";

TEST(PruneIo, Qwen3DirectoryGetsAConsistentConfig) {
  TempDir tmp("moex_prune_io_qwen3");
  model::Model m(model::hf_config_from_string(kQwen3, "qwen3 config"));
  for (size_t i = 0; i < 4; ++i) ASSERT_EQ(m.config().layers[i].moe, i % 2 == 1);
  m.init_weights(5);
  model::save_hf_model(m, tmp.sub("src"), "Qwen3MoeForCausalLM");
  io::write_file_atomic(tmp.sub("src") + "/config.json", kQwen3);
  PruneSpec spec;
  spec.keep_layers = {0, 1, 3};  // dense, MoE, MoE: no decoder_sparse_step describes it
  spec.keep_experts = 2;
  prune_and_reload(tmp.sub("src"), tmp.sub("out"), spec);
  const nlohmann::json c = nlohmann::json::parse(read_file(tmp.sub("out") + "/config.json"));
  EXPECT_EQ(c["num_hidden_layers"], 3);
  EXPECT_EQ(c["num_experts"], 2);
  EXPECT_EQ(c["num_local_experts"], 2);
  EXPECT_EQ(c["decoder_sparse_step"], 1);
  EXPECT_EQ(c["mlp_only_layers"], nlohmann::json::array({0}));
  EXPECT_EQ(c["layer_types"].size(), 3u);
  EXPECT_EQ(c["bos_token_id"], 1);
  EXPECT_FALSE(c.contains("torch_dtype"));
  EXPECT_EQ(c["max_window_layers"], 4);  // untouched
  EXPECT_EQ(c["rope_theta"], 10000.0);
  const ModelConfig back = model::hf_config_from_file(tmp.sub("out") + "/config.json");
  EXPECT_EQ(back.layers[2].moe_config.num_experts, 2);
}

// The models transformers itself saved (tests/fixtures/hf/<arch>/model, from
// tests/reference/make_hf_fixtures.py): Qwen2-MoE is sharded with a dense layer and a shared
// expert, Qwen3-MoE has tied embeddings and bf16 weights. tests/reference/check_pruned_hf.py
// loads the same pruned directories in transformers.
TEST(PruneIo, TransformersSavedModelsPruneAndReload) {
  struct Case {
    const char* arch;
    std::vector<int64_t> layers;
    int keep;
  };
  const Case cases[] = {
      {"mixtral", {}, 2}, {"qwen2_moe", {1, 2}, 3}, {"qwen3_moe", {}, 4}, {"olmoe", {1}, 0}};
  TempDir tmp("moex_prune_io_fixtures");
  for (const Case& c : cases) {
    const std::string src =
        std::string(MOEX_SOURCE_DIR) + "/tests/fixtures/hf/" + c.arch + "/model";
    PruneSpec spec;
    spec.keep_layers = c.layers;
    spec.keep_experts = c.keep;
    const PruneResult p = prune_and_reload(src, tmp.sub(c.arch), spec);
    const nlohmann::json written =
        nlohmann::json::parse(read_file(tmp.sub(c.arch) + "/config.json"));
    const nlohmann::json source = nlohmann::json::parse(read_file(src + "/config.json"));
    EXPECT_EQ(written["num_hidden_layers"], p.model->config().num_layers) << c.arch;
    EXPECT_EQ(written["architectures"], source["architectures"]) << c.arch;
    for (const char* key : {"num_experts", "num_local_experts"})
      if (written.contains(key) && c.keep > 0) {
        EXPECT_EQ(written[key], c.keep) << c.arch;
      }
    EXPECT_TRUE(fs::exists(tmp.sub(c.arch) + "/generation_config.json")) << c.arch;
    // Fields that do not describe layers, experts or the stored dtype are the source's.
    const std::set<std::string> rewritten = {
        "num_hidden_layers", "mlp_only_layers", "decoder_sparse_step", "dtype",
        "torch_dtype",       "num_experts",     "num_local_experts",   "layer_types"};
    for (const auto& [key, value] : source.items())
      if (!rewritten.count(key)) {
        EXPECT_EQ(written[key], value) << c.arch << ": " << key;
      }
    EXPECT_EQ(written["dtype"], "float32") << c.arch;
  }
}

TEST(PruneIo, ConfigThatCannotDescribeThePrunedModelIsAnError) {
  // The HF MoE architectures need an MoE layer: keeping only a dense block cannot be written.
  ModelConfig dense = model::hf_config_from_string(kQwen3, "qwen3 config");
  dense.layers = {dense.layers[0]};
  dense.num_layers = 1;
  EXPECT_THROW(pruned_hf_config(nlohmann::json::parse(kQwen3), dense, {0}), Error);
}

// A corpus directory: rows shared among the train splits by size, each row a window of one of
// them (source a holds ids 0..2999, source b 10000..10999: a quarter of the tokens).
TEST(PruneIo, CorpusCalibrationRowsFollowTheSourceSizes) {
  TempDir tmp("moex_prune_io_corpus");
  const auto write = [&](const std::string& prefix, int32_t first, int32_t count) {
    data::IndexedDatasetBuilder b(tmp.sub(prefix), data::TokenDType::kU16);
    std::vector<int32_t> doc(static_cast<size_t>(count));
    for (int32_t i = 0; i < count; ++i) doc[i] = first + i;
    b.add_document(doc);
    b.finish();
  };
  write("a.train", 0, 3000);
  write("b.train", 10000, 1000);
  write("c.train", 20000, 10);  // shorter than a row: not used
  io::write_file_atomic(tmp.sub("corpus.json"), R"({"tokenizer": "t.model", "vocab_size": 30000,
    "sources": [
      {"name": "a", "language": "en", "train": {"prefix": "a.train", "tokens": 3000},
       "valid": {"prefix": "a.valid"}},
      {"name": "b", "language": "es", "train": {"prefix": "b.train", "tokens": 1000},
       "valid": {"prefix": "b.valid"}},
      {"name": "c", "language": "de", "train": {"prefix": "c.train", "tokens": 10},
       "valid": {"prefix": "c.valid"}}]})");
  int64_t batch = 0;
  const std::vector<int32_t> ids = corpus_calibration_ids(tmp.path.string(), 13 * 16, 16, &batch);
  ASSERT_EQ(batch, 13);
  ASSERT_EQ(ids.size(), 13u * 16);
  int from_b = 0;
  for (int64_t r = 0; r < batch; ++r) {
    const int32_t first = ids[r * 16];
    for (int64_t t = 1; t < 16; ++t) ASSERT_EQ(ids[r * 16 + t], first + t) << r;
    ASSERT_TRUE(first + 15 < 3000 || (first >= 10000 && first + 15 < 11000)) << first;
    from_b += first >= 10000;
  }
  // 13 x 3/4 = 9.75 and 13 x 1/4 = 3.25: a's larger remainder gets it the 13th row.
  EXPECT_EQ(from_b, 3);
}

TEST(PruneIo, DatasetCalibrationRowsAreWindowsOfTheStream) {
  TempDir tmp("moex_prune_io_data");
  const std::string prefix = tmp.sub("d");
  {
    data::IndexedDatasetBuilder b(prefix, data::TokenDType::kU16);
    std::vector<int32_t> doc(1000);
    for (int i = 0; i < 1000; ++i) doc[i] = i;  // one document: windows are consecutive ids
    b.add_document(doc);
    b.finish();
  }
  int64_t batch = 0;
  const std::vector<int32_t> ids = dataset_calibration_ids(prefix, 100, 16, &batch);
  ASSERT_EQ(batch, 6);  // 100 / 16
  ASSERT_EQ(ids.size(), 6u * 16);
  std::set<int32_t> starts;
  for (int64_t r = 0; r < batch; ++r) {
    for (int64_t t = 1; t < 16; ++t) EXPECT_EQ(ids[r * 16 + t], ids[r * 16] + t) << r;
    starts.insert(ids[r * 16]);
  }
  EXPECT_GT(starts.size(), 1u);  // windows are drawn across the stream, not one repeated
  EXPECT_THROW(dataset_calibration_ids(prefix, 100, 1000, &batch), Error);  // too short
  EXPECT_THROW(dataset_calibration_ids(tmp.sub("missing"), 100, 16, &batch), Error);
}

}  // namespace
}  // namespace moex::train
