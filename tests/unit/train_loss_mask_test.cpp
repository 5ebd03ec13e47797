// Chat data's loss mask (CorpusSplitStats::mask_prefix): the trainer reads each token but trains
// only on targets whose mask is 1. The reference is independent of the data path: the first step's
// loss (before any update) equals the loss the same model, drawn with the run's seed, computes on
// the batch the trainer drew with the masked targets set to ignore_index (one micro-batch a step
// and no router jitter, so that the step's loss is that batch's evaluation loss).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "data/indexed_dataset.h"
#include "dist/train_compare.h"
#include "first_batch_hook.h"
#include "model/model.h"
#include "ops/cross_entropy.h"
#include "train/trainer.h"
#include "train_fixture.h"

namespace moex::train {
namespace {

namespace fs = std::filesystem;
using testing::FirstBatch;
using testing::losses_of;

constexpr int32_t kVocab = 40;  // next = (prev + 1) % 40: a window's targets are its ids plus one

bool trained(int32_t token) {
  return token % 2 == 0;
}  // the corpus' mask: even tokens learned

// One document following the rule, for both splits; with `mask`, the tokens `keep` accepts
// (by default the even ones) are marked 1.
fs::path masked_corpus(const fs::path& dir, bool mask, bool (*keep)(int32_t) = trained) {
  return testing::one_source_corpus(dir, [&](const std::string& split, const fs::path& prefix) {
    data::IndexedDatasetBuilder tokens(prefix.string(), data::TokenDType::kU16);
    data::IndexedDatasetBuilder marks(prefix.string() + ".mask", data::TokenDType::kU16);
    std::vector<int32_t> ids, m;
    for (int i = 0; i < (split[0] == 't' ? 2000 : 200); ++i) {
      ids.push_back((i + 5) % kVocab);
      m.push_back(keep(ids.back()) ? 1 : 0);
    }
    tokens.add_document(ids);
    marks.add_document(m);
    tokens.finish();
    marks.finish();
    nlohmann::json fields = {{"tokens", ids.size()}};
    if (mask) fields["loss_mask"] = prefix.filename().string() + ".mask";
    return fields;
  });
}

// The loss of the run's initial model on the batch, over the targets `keep` accepts.
double masked_reference_loss(const TrainConfig& c, const FirstBatch& first, bool (*keep)(int32_t)) {
  model::Model m(c.model);
  m.init_weights(c.training.seed);
  std::vector<int32_t> targets(first.ids_.size());
  for (size_t i = 0; i < targets.size(); ++i) {
    const int32_t next = (first.ids_[i] + 1) % kVocab;
    targets[i] = keep(next) ? next : ops::kIgnoreIndex;
  }
  model::ForwardOptions eval;
  return m.forward(first.ids_.data(), targets.data(), first.batch_, c.data.seq_len, eval).loss;
}

bool every(int32_t) {
  return true;
}

TEST(LossMask, OnlyMarkedTargetsAreTrainedOn) {
  const fs::path root =
      fs::temp_directory_path() / ("moex_loss_mask_" + std::to_string(::getpid()));
  for (const bool mask : {true, false}) {
    const fs::path corpus = masked_corpus(root / (mask ? "masked" : "plain"), mask);
    const std::string out = (corpus / "run").string();
    const TrainConfig c = TrainConfig::from_file(
        testing::write_config(corpus, out, R"(, "steps": 1, "eval_every": 1, "grad_accum": 1)",
                              nullptr, R"(, "jitter_eps": 0)")
            .string());
    FirstBatch first;
    run_training(c, "", 0, nullptr, &first);
    ASSERT_FALSE(first.ids_.empty());
    for (size_t i = 0; i + 1 < first.ids_.size(); ++i) {
      if ((i + 1) % c.data.seq_len == 0) continue;  // the next window
      ASSERT_EQ(first.ids_[i + 1], (first.ids_[i] + 1) % kVocab) << "a window is not the rule";
    }
    const double loss = losses_of(out + "/metrics.jsonl").at(0);
    const double masked = masked_reference_loss(c, first, trained),
                 full = masked_reference_loss(c, first, every);
    ASSERT_GT(std::abs(masked - full), 1e-3) << "the mask must change the loss for this to test it";
    EXPECT_NEAR(loss, mask ? masked : full, 1e-5 * std::abs(loss)) << (mask ? "masked" : "plain");
    // The held-out loss is finite with the mask too (its windows read the valid split's mask).
    std::ifstream metrics(out + "/metrics.jsonl");
    const std::string line((std::istreambuf_iterator<char>(metrics)), {});
    EXPECT_NE(line.find("\"eval_loss\""), std::string::npos) << line;
  }
  fs::remove_all(root);
}

// Micro-batches hold different numbers of trained targets (only tokens below 12 are, so a window
// of 16 holds 0 to 12 of them): the step's loss and update are still the mean over all its trained
// targets, the same whether its 4 windows run as one micro-batch or as two of two.
bool low(int32_t token) {
  return token < 12;
}

TEST(LossMask, TheStepIsTheMeanOverItsTrainedTargetsHoweverItIsSplit) {
  const fs::path root =
      fs::temp_directory_path() / ("moex_loss_mask_split_" + std::to_string(::getpid()));
  const fs::path corpus = masked_corpus(root / "corpus", true, low);
  // Dropless routing without aux loss or jitter: nothing else depends on the micro-batch size.
  const std::string moe = R"(, "dropless": true, "aux_loss_coef": 0, "jitter_eps": 0)";
  auto run = [&](const std::string& name, int mb, int accum) {
    const std::string out = (root / name).string();
    run_training(TrainConfig::from_file(
                     testing::write_config(
                         corpus, out,
                         R"(, "steps": 3, "eval_every": 0, "micro_batch_size": )" +
                             std::to_string(mb) + R"(, "grad_accum": )" + std::to_string(accum),
                         nullptr, moe)
                         .string()),
                 "");
    return out;
  };
  const std::string whole = run("whole", 4, 1), split = run("split", 2, 2);
  const std::vector<double> a = losses_of(whole + "/metrics.jsonl"),
                            b = losses_of(split + "/metrics.jsonl");
  ASSERT_EQ(a.size(), 3u);
  ASSERT_EQ(b.size(), 3u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5 * a[i]) << "step " << i + 1;
  testing::expect_same_checkpoint(whole + "/final", split + "/final", 1e-4, 1e-4);
  fs::remove_all(root);
}

}  // namespace
}  // namespace moex::train
