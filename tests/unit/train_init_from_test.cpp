// training.init_from: a run starts from a model directory's model and weights. The reference for
// the loaded weights is independent of the trainer: the first step's loss (before any update)
// equals the loss model::load_model's whole model computes on the batch the trainer drew.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/indexed_dataset.h"
#include "model/hf_config.h"
#include "model/model_io.h"
#include "train/distill.h"
#include "train/trainer.h"
#include "first_batch_hook.h"
#include "train_fixture.h"

namespace moex::train {
namespace {

namespace fs = std::filesystem;
using testing::FirstBatch;
using testing::losses_of;

constexpr int32_t kRuleVocab = 40;  // next = (prev + 1) % 40 in the corpus below

// The Qwen3-MoE fixture (vocab 128, tied embeddings) copied with a tokenizer beside it.
fs::path hf_model_copy(const fs::path& dir) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  const fs::path fixture = fs::path(MOEX_SOURCE_DIR) / "tests/fixtures/hf/qwen3_moe/model";
  for (const auto& e : fs::directory_iterator(fixture))
    fs::copy_file(e.path(), dir / e.path().filename());
  std::ofstream(dir / "tokenizer.json") << R"({"model": {"type": "BPE"}, "note": "test stand-in"})";
  std::ofstream(dir / "tokenizer_config.json") << R"({"chat_template": "stand-in"})";
  return dir;
}

// One source whose train split is a single document following next = (prev + 1) % 40, so every
// training window is contiguous and its targets are its ids plus one. `tokenizer` is copied in as
// the corpus tokenizer under `tokenizer_name`.
fs::path rule_corpus(const fs::path& dir, const fs::path& tokenizer,
                     const std::string& tokenizer_name) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  for (const char* split : {"train", "valid"}) {
    data::IndexedDatasetBuilder builder((dir / (std::string("a.") + split)).string(),
                                        data::TokenDType::kU16);
    std::vector<int32_t> ids;
    for (int i = 0; i < (split[0] == 't' ? 2000 : 100); ++i) ids.push_back((i + 5) % kRuleVocab);
    builder.add_document(ids);
    builder.finish();
  }
  fs::copy_file(tokenizer, dir / tokenizer_name);
  std::ofstream(dir / "corpus.json") << R"({"tokenizer": ")" + tokenizer_name +
                                            R"(", "vocab_size": 40, "sources": [
    {"name": "a", "language": "en", "train": {"prefix": "a.train", "tokens": 2000},
     "valid": {"prefix": "a.valid", "tokens": 100}}]})";
  return dir;
}

// A training config without a "model" section; `extra` is added to the top level.
std::string run_config(const fs::path& corpus, const std::string& out_dir,
                       const std::string& init_from, int steps, const std::string& extra = "") {
  const fs::path path = corpus / ("run_" + std::to_string(std::hash<std::string>()(out_dir)) +
                                  ".json");
  std::ofstream(path) << R"({)" + extra + R"(
    "data": {"path": ")" + corpus.string() + R"(", "seq_len": 16},
    "optimizer": {"lr": 0.003},
    "training": {"steps": )" + std::to_string(steps) + R"(, "micro_batch_size": 4,
                 "log_every": 1, "eval_every": 0, "out_dir": ")" + out_dir + R"(")" +
                            (init_from.empty() ? "" : R"(, "init_from": ")" + init_from + "\"") +
                            "}}";
  return path.string();
}


// The loss `dir`'s whole model (load_model) computes on the batch; asserts the rule that makes
// the batch's targets its ids plus one.
double reference_loss(const std::string& dir, const FirstBatch& first, int64_t seq_len) {
  std::vector<int32_t> targets(first.ids_.size());
  for (size_t i = 0; i < first.ids_.size(); ++i) {
    targets[i] = (first.ids_[i] + 1) % kRuleVocab;
    if (i % seq_len + 1 < static_cast<size_t>(seq_len)) {
      EXPECT_EQ(first.ids_[i + 1], targets[i]) << "the window is not contiguous at " << i;
    }
  }
  const std::unique_ptr<model::Model> m = model::load_model(dir);
  model::ForwardOptions eval;
  return m->forward(first.ids_.data(), targets.data(), first.batch_, seq_len, eval).loss;
}

TEST(InitFrom, HuggingFaceModelStartsFromItsLossAndSavesItsConfig) {
  const fs::path root =
      fs::temp_directory_path() / ("moex_init_from_" + std::to_string(::getpid()));
  const fs::path hf = hf_model_copy(root / "hf");
  const fs::path corpus = rule_corpus(root / "corpus", hf / "tokenizer.json", "tokenizer.json");

  // Step 1's loss is computed before any update: the HF model's own loss on that batch.
  const std::string one = (root / "one").string();
  FirstBatch first;
  const TrainConfig c1 = TrainConfig::from_file(run_config(corpus, one, hf.string(), 1));
  run_training(c1, "", 0, nullptr, &first);
  ASSERT_EQ(first.ids_.size(), 4u * 16u);
  const double ref = reference_loss(hf.string(), first, 16);
  const std::vector<double> losses = losses_of(one + "/metrics.jsonl");
  ASSERT_EQ(losses.size(), 1u);
  EXPECT_NEAR(losses[0], ref, 1e-5 * std::abs(ref));
  // The check can fail: the same model drawn at random (the HF config as a "model" section)
  // starts from another loss.
  const std::string drawn = (root / "drawn").string();
  const std::string model_section =
      "\"model\": " + model::load_model_config(hf.string()).to_json().dump() + ",";
  FirstBatch first_drawn;
  run_training(TrainConfig::from_file(run_config(corpus, drawn, "", 1, model_section)), "", 0,
               nullptr, &first_drawn);
  EXPECT_EQ(first_drawn.ids_, first.ids_);
  EXPECT_GT(std::abs(losses_of(drawn + "/metrics.jsonl").at(0) - ref), 1e-3);

  // A few real steps: the saved model is the HF model's config with changed weights; a run
  // stopped and resumed equals the straight one (the resume takes the checkpoint's weights, not
  // init_from's).
  const std::string straight = (root / "straight").string(), split = (root / "split").string();
  run_training(TrainConfig::from_file(run_config(corpus, straight, hf.string(), 4)), "");
  const TrainConfig split_config =
      TrainConfig::from_file(run_config(corpus, split, hf.string(), 4));
  run_training(split_config, "", 2);
  run_training(split_config, split + "/latest");
  const std::vector<double> a = losses_of(straight + "/metrics.jsonl");
  ASSERT_EQ(a.size(), 4u);
  EXPECT_EQ(a, losses_of(split + "/metrics.jsonl"));
  EXPECT_LT(a.back(), a.front());

  const ModelConfig hf_config = model::load_model_config(hf.string());
  const std::unique_ptr<model::Model> saved = model::load_model(straight + "/final");
  const std::unique_ptr<model::Model> original = model::load_model(hf.string());
  EXPECT_EQ(saved->config().to_json(), hf_config.to_json());
  EXPECT_EQ(saved->config().num_parameters(), hf_config.num_parameters());
  EXPECT_EQ(saved->params().num_elements(), original->params().num_elements());
  bool changed = false;
  const ParamBuffer s = saved->host_params(), o = original->host_params();
  for (int64_t i = 0; i < s.flat().numel() && !changed; ++i)
    changed = s.flat().data<float>()[i] != o.flat().data<float>()[i];
  EXPECT_TRUE(changed) << "training with lr > 0 should change the weights";
  // The corpus was tokenized with the model's tokenizer: the checkpoint carries the model's files.
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"})
    EXPECT_TRUE(fs::exists(straight + "/final/" + f)) << f;

  // A moex directory: that checkpoint's model and weights, its loss on the first batch.
  const std::string again = (root / "again").string();
  FirstBatch first_again;
  run_training(TrainConfig::from_file(run_config(corpus, again, straight + "/final", 1)), "", 0,
               nullptr, &first_again);
  const double ref_again = reference_loss(straight + "/final", first_again, 16);
  EXPECT_NEAR(losses_of(again + "/metrics.jsonl").at(0), ref_again, 1e-5 * std::abs(ref_again));

  // Another tokenizer in the corpus: the checkpoints carry the corpus's (a warning says so).
  const fs::path other = root / "other.model";
  std::ofstream(other) << "another tokenizer";
  const fs::path corpus2 = rule_corpus(root / "corpus2", other, "tok.model");
  const std::string mixed = (root / "mixed").string();
  run_training(TrainConfig::from_file(run_config(corpus2, mixed, hf.string(), 1)), "");
  EXPECT_TRUE(fs::exists(mixed + "/final/tok.model"));
  EXPECT_FALSE(fs::exists(mixed + "/final/tokenizer.json"));
  EXPECT_FALSE(fs::exists(mixed + "/final/tokenizer_config.json"));
  fs::remove_all(root);
}

void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    for (const std::string& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << "\nlacks: " << p;
  }
}

TEST(InitFrom, ConfigErrorsNameTheFieldAndFile) {
  const fs::path root = fs::temp_directory_path() / ("moex_init_err_" + std::to_string(::getpid()));
  const fs::path hf = hf_model_copy(root / "hf");
  const fs::path corpus = rule_corpus(root / "corpus", hf / "tokenizer.json", "tokenizer.json");
  const std::string out = (root / "out").string();

  const std::string with_model = run_config(
      corpus, out, hf.string(), 1,
      R"("model": {"vocab_size": 128, "hidden_size": 64, "num_layers": 2, "num_heads": 4,
                   "max_seq_len": 256},)");
  expect_error([&] { TrainConfig::from_file(with_model); },
               {with_model, "model: leave it out with training.init_from", hf.string()});
  const std::string missing = run_config(corpus, out, (root / "nowhere").string(), 1);
  expect_error([&] { TrainConfig::from_file(missing); },
               {missing, "training.init_from", "nowhere: no such directory"});
  fs::create_directories(root / "empty");
  const std::string empty = run_config(corpus, out, (root / "empty").string(), 1);
  expect_error([&] { TrainConfig::from_file(empty); },
               {empty, "training.init_from", "empty/config.json is missing"});
  const fs::path llama = root / "llama";
  fs::create_directories(llama);
  std::ofstream(llama / "model.safetensors") << "";
  std::ofstream(llama / "config.json")
      << R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama"})";
  const std::string unsupported = run_config(corpus, out, llama.string(), 1);
  expect_error([&] { TrainConfig::from_file(unsupported); },
               {unsupported, "training.init_from", "llama/config.json", "architectures",
                "LlamaForCausalLM"});
  // --init-from overrides the config's (and names itself).
  const std::string plain = run_config(corpus, out, "", 1);
  EXPECT_EQ(TrainConfig::from_file(plain, hf.string()).model.to_json(),
            model::load_model_config(hf.string()).to_json());
  expect_error([&] { TrainConfig::from_file(plain, (root / "nowhere").string()); },
               {"--init-from", "no such directory"});
  // Distillation's own initialization sets the student's weights too: one or the other.
  const std::string distill = run_config(corpus, out, hf.string(), 1,
                                         R"("distill": {"init_from_teacher_layers": [0, 1]},)");
  expect_error([&] { DistillRunConfig::from_file(distill); },
               {distill, "distill.init_from_teacher_layers", "training.init_from"});
  EXPECT_FALSE(fs::exists(out)) << "nothing is written before the config is known to be good";
  fs::remove_all(root);
}

}  // namespace
}  // namespace moex::train
