// Expert pruning (train/prune.h): the kept experts are the most loaded ones, their router rows,
// selection bias and weights come across unchanged and in order, the parameter count drops by
// exactly the removed experts, and tokens whose chosen experts all survive get the same output.
#include <gtest/gtest.h>

#include <algorithm>

#include "core/json_reader.h"
#include "core/rng.h"
#include "train/prune.h"

namespace moex::train {
namespace {

const char* kConfig = R"({
  "vocab_size": 50, "hidden_size": 16, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1,
  "max_seq_len": 32, "ffn_size": 24, "init_std": 0.3,
  "moe": {"layer_freq": 1, "num_experts": 6, "top_k": 2, "ffn_size": 8, "renormalize": true,
          "score_func": "sigmoid", "selection_bias": true, "dropless": true}})";

TEST(Prune, KeepsTheMostLoadedExpertsAndTheirWeights) {
  model::Model m(ModelConfig::from_json(JsonReader::from_string(kConfig, "prune_test.json")));
  m.init_weights(4);
  std::vector<int32_t> ids(3 * 20);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(philox_u32(3, 0, i) % 50);
  const ExpertLoads loads = calibration_loads(m, ids, 3, 20);
  ASSERT_EQ(loads.size(), 2u);
  const PruneResult p = prune_experts(m, kConfig, loads, 3);

  const int64_t d = 16, f = 8;
  EXPECT_EQ(p.params_before - p.params_after, 2 * 3 * (d + 1 + 3 * d * f));
  EXPECT_EQ(p.model->params().num_elements(), p.params_after);
  for (const auto& [layer, kept] : p.kept) {
    const std::vector<double>& load = loads.at(layer);
    ASSERT_EQ(kept.size(), 3u);
    EXPECT_TRUE(std::is_sorted(kept.begin(), kept.end()));
    // No dropped expert carried more routes than a kept one.
    double least_kept = 1e30, most_dropped = -1;
    for (int e = 0; e < 6; ++e) {
      const bool k = std::find(kept.begin(), kept.end(), e) != kept.end();
      (k ? least_kept : most_dropped) =
          k ? std::min(least_kept, load[e]) : std::max(most_dropped, load[e]);
    }
    EXPECT_GE(least_kept, most_dropped);
    const std::string prefix = "model.layers." + std::to_string(layer) + ".mlp.";
    for (const char* name : {"gate.weight", "experts.gate_up_proj", "experts.down_proj"}) {
      const Tensor& from = m.params().tensor(m.params().index_of(prefix + name));
      const Tensor& to = p.model->params().tensor(p.model->params().index_of(prefix + name));
      ASSERT_EQ(to.dim(0), 3);
      const int64_t row = from.numel() / from.dim(0);
      for (int j = 0; j < 3; ++j)
        EXPECT_TRUE(std::equal(to.data<float>() + j * row, to.data<float>() + (j + 1) * row,
                               from.data<float>() + kept[j] * row))
            << name << " row " << j;
    }
  }
  // Everything else is copied: attention weights of layer 0 are identical.
  const std::string q = "model.layers.0.self_attn.q_proj.weight";
  const Tensor& a = m.params().tensor(m.params().index_of(q));
  const Tensor& b = p.model->params().tensor(p.model->params().index_of(q));
  EXPECT_TRUE(std::equal(a.data<float>(), a.data<float>() + a.numel(), b.data<float>()));
}

TEST(Prune, RefusesBadCounts) {
  model::Model m(ModelConfig::from_json(JsonReader::from_string(kConfig, "prune_test.json")));
  m.init_weights(4);
  std::vector<int32_t> ids(20, 1);
  const ExpertLoads loads = calibration_loads(m, ids, 1, 20);
  EXPECT_THROW(prune_experts(m, kConfig, loads, 1), Error);  // fewer than top_k
  EXPECT_THROW(prune_experts(m, kConfig, loads, 6), Error);  // nothing removed
}

}  // namespace
}  // namespace moex::train
