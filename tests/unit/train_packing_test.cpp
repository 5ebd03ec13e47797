// data.packing false: each sample is one document from its first token, padded after its end
// with targets that are not trained. The reference is independent of the sampler and the trainer:
// the first step's loss (before any update) equals the mean of the token losses the same model,
// drawn with the run's seed, computes on each document of the batch alone, unpadded. That holds
// only if every row starts at a document's start, the padding is masked, and no real token
// attends to the padding (causal attention) nor is routed differently because of it (dropless
// routing decides each token alone).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "data/indexed_dataset.h"
#include "first_batch_hook.h"
#include "model/model.h"
#include "ops/cross_entropy.h"
#include "train/trainer.h"
#include "train_fixture.h"
#include "unit/cpu_kernel_checks.h"

namespace moex::train {
namespace {

namespace fs = std::filesystem;
using testing::FirstBatch;
using testing::losses_of;

constexpr int32_t kVocab = 40;
constexpr int64_t kSeqLen = 16;

// Ids 1..39 (0 is the padding): next = prev % 39 + 1.
int32_t next_id(int32_t id) {
  return id % (kVocab - 1) + 1;
}

// Document d starts at id d % 39 + 1; lengths 3..15 and 17..29 (never 16, so that a row of ids
// with no padding is a document of at least 17 tokens, whose last target is trained).
int64_t document_length(int d) {
  const int64_t n = 3 + (d * 5) % 26;
  return n >= kSeqLen ? n + 1 : n;
}

fs::path documents_corpus(const fs::path& dir) {
  return testing::one_source_corpus(dir, [](const std::string&, const fs::path& prefix) {
    data::IndexedDatasetBuilder tokens(prefix.string(), data::TokenDType::kU16);
    int64_t count = 0;
    for (int d = 0; d < 60; ++d) {
      std::vector<int32_t> ids{d % (kVocab - 1) + 1};
      while (static_cast<int64_t>(ids.size()) < document_length(d))
        ids.push_back(next_id(ids.back()));
      tokens.add_document(ids);
      count += static_cast<int64_t>(ids.size());
    }
    tokens.finish();
    return nlohmann::json{{"tokens", count}};
  });
}

TEST(Packing, OneDocumentSamplesTrainEachDocumentAlone) {
  const fs::path root = fs::temp_directory_path() / ("moex_packing_" + std::to_string(::getpid()));
  const fs::path corpus = documents_corpus(root / "corpus");
  const std::string out = (root / "run").string();
  const std::string data =
      R"(, "data": {"path": ")" + corpus.string() + R"(", "seq_len": 16, "packing": false})";
  const TrainConfig c = TrainConfig::from_file(
      testing::write_config(corpus, out, R"(, "steps": 2, "eval_every": 1, "grad_accum": 1)",
                            nullptr, R"(, "dropless": true, "jitter_eps": 0)", data)
          .string());
  ASSERT_FALSE(c.data.packing);
  FirstBatch first;
  run_training(c, "", 0, nullptr, &first);
  ASSERT_EQ(first.batch_, c.training.micro_batch_size);

  model::Model m(c.model);
  m.init_weights(c.training.seed);
  model::ForwardOptions eval;
  double loss_sum = 0;
  int64_t trained = 0, padded_rows = 0;
  std::vector<int32_t> padded_targets(first.ids_.size());
  for (int64_t b = 0; b < first.batch_; ++b) {
    const int32_t* row = first.ids_.data() + b * kSeqLen;
    // The row is one document's start: the rule from its first id, then padding only.
    const int64_t real = std::find(row, row + kSeqLen, 0) - row;
    ASSERT_GE(real, 3) << "row " << b;
    for (int64_t t = 1; t < real; ++t) ASSERT_EQ(row[t], next_id(row[t - 1])) << "row " << b;
    for (int64_t t = real; t < kSeqLen; ++t) ASSERT_EQ(row[t], 0) << "row " << b;
    padded_rows += real < kSeqLen;
    // The document alone: its own length (cut at seq_len + 1 tokens), no padding.
    const int64_t n = real < kSeqLen ? real : kSeqLen + 1;
    std::vector<int32_t> ids(row, row + n - 1), targets(static_cast<size_t>(n - 1));
    for (int64_t t = 0; t + 1 < n; ++t) targets[t] = next_id(ids[t]);
    loss_sum += m.forward(ids.data(), targets.data(), 1, n - 1, eval).loss * (n - 1);
    trained += n - 1;
    for (int64_t t = 0; t < kSeqLen; ++t)
      padded_targets[b * kSeqLen + t] = t + 1 < real || real == kSeqLen ? next_id(row[t]) : 0;
  }
  ASSERT_GT(padded_rows, 0) << "the batch must hold padding for this to test it";
  const double reference = loss_sum / static_cast<double>(trained);
  const double loss = losses_of(out + "/metrics.jsonl").at(0);
  EXPECT_NEAR(loss, reference, 1e-5 * reference);
  // Training on the padding too would give another loss.
  const double unmasked =
      m.forward(first.ids_.data(), padded_targets.data(), first.batch_, kSeqLen, eval).loss;
  EXPECT_GT(std::abs(unmasked - reference), 1e-3);
  // The held-out loss reads one document a sample too.
  std::ifstream metrics(out + "/metrics.jsonl");
  const std::string line((std::istreambuf_iterator<char>(metrics)), {});
  EXPECT_NE(line.find("\"eval_loss\""), std::string::npos) << line;

  // A run resumed under the other packing is refused with the field's name.
  const TrainConfig packed = TrainConfig::from_file(
      testing::write_config(corpus, out, R"(, "steps": 3, "grad_accum": 1)", nullptr,
                            R"(, "dropless": true, "jitter_eps": 0)")
          .string());
  testing::expect_error_naming([&] { run_training(packed, out + "/final", 0, nullptr); },
                               {"data.packing"});
  fs::remove_all(root);
}

TEST(Packing, MustBeTrueOrFalse) {
  const fs::path root =
      fs::temp_directory_path() / ("moex_packing_bad_" + std::to_string(::getpid()));
  const fs::path corpus = documents_corpus(root / "corpus");
  const std::string data =
      R"(, "data": {"path": ")" + corpus.string() + R"(", "seq_len": 16, "packing": "no"})";
  const fs::path path =
      testing::write_config(corpus, (root / "run").string(), "", nullptr, "", data);
  testing::expect_error_naming([&] { TrainConfig::from_file(path.string()); },
                               {"data.packing", "true or false"});
  fs::remove_all(root);
}

}  // namespace
}  // namespace moex::train
