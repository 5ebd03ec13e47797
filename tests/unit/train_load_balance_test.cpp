// The auxiliary-loss-free balancing rule (train/load_balance.h): the exact update on given loads,
// and, in closed loop on a model whose routing starts out skewed, loads that even out.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/json_reader.h"
#include "core/rng.h"
#include "train/load_balance.h"

namespace moex::train {
namespace {

ModelConfig balance_config() {
  const std::string text = R"({
    "vocab_size": 64, "hidden_size": 16, "num_layers": 2, "num_heads": 2, "num_kv_heads": 2,
    "max_seq_len": 32, "ffn_size": 24, "init_std": 0.2,
    "moe": {"layer_freq": 1, "num_experts": 4, "top_k": 1, "ffn_size": 8, "score_func": "sigmoid",
            "selection_bias": true, "dropless": true}})";
  return ModelConfig::from_json(JsonReader::from_string(text, "load_balance_test.json"));
}

std::vector<float> bias_of(const model::Model& m, int layer) {
  const Tensor& t = m.params().tensor(m.params().index_of(
      "model.layers." + std::to_string(layer) + ".mlp.gate.e_score_correction_bias"));
  return {t.data<float>(), t.data<float>() + t.numel()};
}

TEST(LoadBalance, StepIsRateTimesSignOfTheGapToTheMean) {
  model::Model m(balance_config());
  m.init_weights(1);
  ExpertLoads loads;
  loads[0] = {10, 2, 2, 2};  // mean 4
  loads[1] = {3, 3, 3, 3};   // balanced: no move
  const uint64_t version = m.params().flat().version();
  EXPECT_EQ(update_selection_bias(m, loads, 0.25), 2);
  EXPECT_EQ(bias_of(m, 0), (std::vector<float>{-0.25f, 0.25f, 0.25f, 0.25f}));
  EXPECT_EQ(bias_of(m, 1), (std::vector<float>{0, 0, 0, 0}));
  EXPECT_GT(m.params().flat().version(), version);  // the GPU MoE layer sees the change
  loads[0] = {1, 7, 4, 4};
  update_selection_bias(m, loads, 0.25);
  EXPECT_EQ(bias_of(m, 0), (std::vector<float>{0.0f, 0.0f, 0.25f, 0.25f}));
}

TEST(LoadBalance, SkewedRoutingEvensOut) {
  model::Model m(balance_config());
  m.init_weights(2);
  // Start with expert 0 favoured in every layer: its bias dominates the sigmoid scores.
  for (int layer = 0; layer < 2; ++layer) {
    const Tensor& t = m.params().tensor(m.params().index_of(
        "model.layers." + std::to_string(layer) + ".mlp.gate.e_score_correction_bias"));
    t.data<float>()[0] = 0.6f;
  }
  m.weights_changed();
  std::vector<int32_t> ids(4 * 16), targets(4 * 16, -100);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(philox_u32(9, 0, i) % 64);
  auto max_share = [&](ExpertLoads* out) {
    model::ForwardOptions opt;
    m.forward(ids.data(), targets.data(), 4, 16, opt);
    ExpertLoads loads;
    accumulate_expert_loads(m, loads);
    double worst = 0;
    for (const auto& [layer, load] : loads) {
      double total = 0;
      for (double l : load) total += l;
      worst = std::max(worst, *std::max_element(load.begin(), load.end()) / total);
    }
    if (out) *out = loads;
    return worst;
  };
  const double before = max_share(nullptr);
  EXPECT_GT(before, 0.9);  // nearly every token on expert 0
  ExpertLoads loads;
  for (int step = 0; step < 60; ++step) {
    max_share(&loads);
    update_selection_bias(m, loads, 0.02);
  }
  const double after = max_share(nullptr);
  std::printf("[ info ] largest expert share %.3f -> %.3f\n", before, after);
  EXPECT_LT(after, 0.5);  // balanced would be 0.25
  EXPECT_LT(bias_of(m, 0)[0], 0.6f);
}

}  // namespace
}  // namespace moex::train
