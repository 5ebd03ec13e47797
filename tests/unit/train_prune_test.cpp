// Pruning (train/prune.h): the kept experts are the highest scored ones and come across with
// their router rows, selection bias and weights unchanged and in order; a model whose dropped
// experts are never routed to, or whose dropped blocks add nothing to the residual stream, gives
// the same logits after pruning; frequency and gate mass are checked against a naive pass over
// a constructed one-layer model; bad specs are refused.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>

#include "core/json_reader.h"
#include "core/rng.h"
#include "model_probe.h"
#include "train/prune.h"

namespace moex::train {
namespace {

using testing::model_logits;
using testing::random_ids;

const char* kConfig = R"({
  "vocab_size": 50, "hidden_size": 16, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1,
  "max_seq_len": 32, "ffn_size": 24, "init_std": 0.3,
  "moe": {"layer_freq": 1, "num_experts": 6, "top_k": 2, "ffn_size": 8, "renormalize": true,
          "score_func": "sigmoid", "selection_bias": true, "dropless": true}})";

std::unique_ptr<model::Model> make_model(const std::string& json, uint64_t seed) {
  auto m = std::make_unique<model::Model>(
      ModelConfig::from_json(JsonReader::from_string(json, "prune_test.json")));
  m->init_weights(seed);
  return m;
}

const Tensor& param(model::Model& m, const std::string& name) {
  const int i = m.params().index_of(name);
  EXPECT_GE(i, 0) << name;
  return m.params().tensor(i);
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::fabs(double(a[i]) - b[i]));
  return d;
}

PruneSpec experts_spec(int keep, RankBy rank_by = RankBy::kFrequency) {
  PruneSpec s;
  s.keep_experts = keep;
  s.rank_by = rank_by;
  return s;
}

TEST(Prune, KeepsTheMostLoadedExpertsAndTheirWeights) {
  auto m = make_model(kConfig, 4);
  const std::vector<int32_t> ids = random_ids(3 * 20, 50, 3);
  const ExpertLoads loads = calibration_scores(*m, ids, 3, 20, RankBy::kFrequency, 2);
  ASSERT_EQ(loads.size(), 2u);
  for (const auto& [layer, load] : loads) {  // every token routed k = 2 times
    double routes = 0;
    for (double l : load) routes += l;
    EXPECT_EQ(routes, 3 * 20 * 2) << layer;
  }
  const PruneResult p = prune_model(*m, loads, experts_spec(3));

  const int64_t d = 16, f = 8;
  EXPECT_EQ(p.before.total - p.after.total, 2 * 3 * (d + 1 + 3 * d * f));
  EXPECT_EQ(p.model->params().num_elements(), p.after.total);
  // Active: the top-2 experts of each layer are what a token computes with, before and after.
  EXPECT_EQ(p.before.total - p.before.active, 2 * 4 * 3 * d * f);
  EXPECT_EQ(p.after.total - p.after.active, 2 * 1 * 3 * d * f);
  ASSERT_EQ(p.kept.size(), 2u);
  for (const auto& [layer, kept] : p.kept) {
    const std::vector<double>& load = loads.at(layer);
    ASSERT_EQ(kept.size(), 3u);
    EXPECT_TRUE(std::is_sorted(kept.begin(), kept.end()));
    // No dropped expert carried more routes than a kept one.
    double least_kept = 1e30, most_dropped = -1;
    for (int e = 0; e < 6; ++e) {
      if (std::find(kept.begin(), kept.end(), e) != kept.end())
        least_kept = std::min(least_kept, load[e]);
      else
        most_dropped = std::max(most_dropped, load[e]);
    }
    EXPECT_GE(least_kept, most_dropped);
    const std::string prefix = "model.layers." + std::to_string(layer) + ".mlp.";
    for (const char* name : {"gate.weight", "gate.e_score_correction_bias", "experts.gate_up_proj",
                             "experts.down_proj"}) {
      const Tensor& from = param(*m, prefix + name);
      const Tensor& to = param(*p.model, prefix + name);
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
  const Tensor& a = param(*m, q);
  const Tensor& b = param(*p.model, q);
  EXPECT_TRUE(std::equal(a.data<float>(), a.data<float>() + a.numel(), b.data<float>()));
}

// Sigmoid scores with a selection bias of -100 on experts 1 and 4: no token ever picks them, and
// each kept route's weight (its own sigmoid, renormalized over the k picked) does not depend on
// the other experts, so removing 1 and 4 changes nothing.
TEST(Prune, SameLogitsWhenTheDroppedExpertsAreNeverRouted) {
  auto m = make_model(kConfig, 5);
  for (int layer = 0; layer < 2; ++layer) {
    float* bias =
        param(*m, "model.layers." + std::to_string(layer) + ".mlp.gate.e_score_correction_bias")
            .data<float>();
    bias[1] = bias[4] = -100.0f;
  }
  m->weights_changed();
  const std::vector<int32_t> calib = random_ids(2 * 16, 50, 7);
  const ExpertLoads loads = calibration_scores(*m, calib, 2, 16, RankBy::kFrequency);
  for (const auto& [layer, load] : loads) EXPECT_EQ(load[1] + load[4], 0.0) << layer;
  const PruneResult p = prune_model(*m, loads, experts_spec(4));
  for (const auto& [layer, kept] : p.kept) EXPECT_EQ(kept, (std::vector<int>{0, 2, 3, 5}));
  const std::vector<int32_t> ids = random_ids(3 * 12, 50, 11);  // not the calibration tokens
  EXPECT_LT(max_abs_diff(model_logits(*m, ids, 3), model_logits(*p.model, ids, 3)), 1e-5);
}

// Softmax scores, renormalized top-2 (Mixtral): router rows 5v, -5v, 5u, -5u for experts 0, 2, 3,
// 5 and zero rows for 1 and 4. Every token's logits are {a, 0, -a, b, 0, -b}: the two positive
// ones win, so 1 and 4 are never picked and the renormalized weights only involve kept experts.
TEST(Prune, SameLogitsWithSoftmaxRoutingWhenTheDroppedExpertsLose) {
  const std::string config = R"({
    "vocab_size": 50, "hidden_size": 16, "num_layers": 1, "num_heads": 2, "max_seq_len": 32,
    "ffn_size": 24, "init_std": 0.3,
    "moe": {"num_experts": 6, "top_k": 2, "ffn_size": 8, "renormalize": true, "dropless": true}})";
  auto m = make_model(config, 6);
  float* router = param(*m, "model.layers.0.mlp.gate.weight").data<float>();  // [6, 16]
  const std::vector<float> v(router, router + 16), u(router + 16, router + 32);
  const int sign[6] = {1, 0, -1, 1, 0, -1};
  for (int e = 0; e < 6; ++e)
    for (int i = 0; i < 16; ++i) router[e * 16 + i] = 5.0f * sign[e] * (e < 3 ? v[i] : u[i]);
  m->weights_changed();
  const std::vector<int32_t> calib = random_ids(2 * 16, 50, 8);
  const ExpertLoads mass = calibration_scores(*m, calib, 2, 16, RankBy::kGateMass);
  EXPECT_EQ(mass.at(0)[1] + mass.at(0)[4], 0.0);
  double total = 0;  // renormalized: each token spends a weight of exactly 1
  for (double g : mass.at(0)) total += g;
  EXPECT_NEAR(total, 2 * 16, 1e-4);
  const PruneResult p = prune_model(*m, mass, experts_spec(4, RankBy::kGateMass));
  EXPECT_EQ(p.kept.at(0).second, (std::vector<int>{0, 2, 3, 5}));
  const std::vector<int32_t> ids = random_ids(2 * 10, 50, 12);
  EXPECT_LT(max_abs_diff(model_logits(*m, ids, 2), model_logits(*p.model, ids, 2)), 1e-5);
}

// A one-layer model with attention switched off (o_proj = 0), so the router sees
// RMSNorm(embedding) and a naive loop can route every token: route counts and summed softmax
// weights (no renormalization), and the top-3 sets they pick. Over the first seeds, one model
// must show the two rankings keeping different experts, and prune must agree with the naive
// choice for both.
TEST(Prune, GateMassAndFrequencyMatchANaiveRouting) {
  const std::string config = R"({
    "vocab_size": 40, "hidden_size": 8, "num_layers": 1, "num_heads": 2, "max_seq_len": 32,
    "ffn_size": 8, "init_std": 0.5,
    "moe": {"num_experts": 8, "top_k": 2, "ffn_size": 4, "dropless": true}})";
  const int64_t d = 8, num_e = 8, keep = 3, batch = 2, seq_len = 24;
  bool found_difference = false;
  for (uint64_t seed = 1; seed <= 40 && !found_difference; ++seed) {
    auto m = make_model(config, seed);
    const Tensor& o = param(*m, "model.layers.0.self_attn.o_proj.weight");
    std::fill(o.data<float>(), o.data<float>() + o.numel(), 0.0f);
    m->weights_changed();
    const float* emb = param(*m, "model.embed_tokens.weight").data<float>();
    const float* norm = param(*m, "model.layers.0.post_attention_layernorm.weight").data<float>();
    const float* wg = param(*m, "model.layers.0.mlp.gate.weight").data<float>();
    const std::vector<int32_t> ids = random_ids(batch * seq_len, 40, seed + 100);

    std::vector<double> freq(num_e, 0), mass(num_e, 0);
    for (int32_t tok : ids) {
      const float* x = emb + tok * d;
      double ms = 0;
      for (int64_t i = 0; i < d; ++i) ms += double(x[i]) * x[i];
      const double inv_rms = 1.0 / std::sqrt(ms / d + m->config().norm_eps);
      std::vector<double> z(num_e, 0);
      for (int64_t e = 0; e < num_e; ++e)
        for (int64_t i = 0; i < d; ++i) z[e] += wg[e * d + i] * x[i] * inv_rms * norm[i];
      const double zmax = *std::max_element(z.begin(), z.end());
      double sum = 0;
      for (double& v : z) sum += (v = std::exp(v - zmax));
      std::vector<int> order(num_e);
      for (int e = 0; e < num_e; ++e) order[e] = e;
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return z[a] > z[b]; });
      for (int j = 0; j < 2; ++j) {
        freq[order[j]] += 1;
        mass[order[j]] += z[order[j]] / sum;
      }
    }
    const auto naive_top = [&](const std::vector<double>& score) {
      std::vector<int> order(num_e);
      for (int e = 0; e < num_e; ++e) order[e] = e;
      std::stable_sort(order.begin(), order.end(),
                       [&](int a, int b) { return score[a] > score[b]; });
      order.resize(keep);
      std::sort(order.begin(), order.end());
      return order;
    };

    const ExpertLoads f = calibration_scores(*m, ids, batch, seq_len, RankBy::kFrequency, 1);
    const ExpertLoads g = calibration_scores(*m, ids, batch, seq_len, RankBy::kGateMass, 1);
    for (int e = 0; e < num_e; ++e) {
      ASSERT_EQ(f.at(0)[e], freq[e]) << "seed " << seed << " expert " << e;
      ASSERT_NEAR(g.at(0)[e], mass[e], 1e-4) << "seed " << seed << " expert " << e;
    }
    const std::vector<int> by_freq = naive_top(freq), by_mass = naive_top(mass);
    // A near tie could rank differently in float; such seeds decide nothing.
    std::vector<double> sorted_mass = mass, sorted_freq = freq;
    std::sort(sorted_mass.rbegin(), sorted_mass.rend());
    std::sort(sorted_freq.rbegin(), sorted_freq.rend());
    if (sorted_mass[keep - 1] - sorted_mass[keep] < 1e-3 ||
        sorted_freq[keep - 1] == sorted_freq[keep])
      continue;
    EXPECT_EQ(prune_model(*m, f, experts_spec(keep)).kept.at(0).second, by_freq);
    EXPECT_EQ(prune_model(*m, g, experts_spec(keep, RankBy::kGateMass)).kept.at(0).second, by_mass);
    found_difference = by_freq != by_mass;
  }
  EXPECT_TRUE(found_difference) << "no seed where gate mass and frequency keep different experts";
}

// Blocks 0 and 3 of a four-block model (dense, MoE, dense, MoE) made to add nothing to the
// residual stream (attention and FFN outputs zero): keeping blocks 1 and 2 gives the same logits,
// with the embedding, final norm and head carried over. With --keep-experts as well, only the
// kept MoE block is pruned.
TEST(Prune, KeepLayersEqualsTheModelOfThoseBlocks) {
  const std::string config = R"({
    "vocab_size": 50, "hidden_size": 16, "num_layers": 4, "num_heads": 2, "num_kv_heads": 1,
    "max_seq_len": 32, "ffn_size": 24, "init_std": 0.3,
    "moe": {"layer_freq": 2, "num_experts": 4, "top_k": 2, "ffn_size": 8, "dropless": true}})";
  auto m = make_model(config, 9);
  for (const char* name :
       {"model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.down_proj.weight",
        "model.layers.3.self_attn.o_proj.weight", "model.layers.3.mlp.experts.down_proj"}) {
    const Tensor& t = param(*m, name);
    std::fill(t.data<float>(), t.data<float>() + t.numel(), 0.0f);
  }
  m->weights_changed();
  PruneSpec spec;
  spec.keep_layers = {1, 2};
  const PruneResult p = prune_model(*m, {}, spec);
  const ModelConfig& c = p.model->config();
  ASSERT_EQ(c.num_layers, 2);
  EXPECT_TRUE(c.layers[0].moe);
  EXPECT_FALSE(c.layers[1].moe);
  EXPECT_EQ(p.layers, (std::vector<int64_t>{1, 2}));
  EXPECT_TRUE(p.kept.empty());
  const std::vector<int32_t> ids = random_ids(2 * 12, 50, 13);
  EXPECT_LT(max_abs_diff(model_logits(*m, ids, 2), model_logits(*p.model, ids, 2)), 1e-5);
  // The pruned block 1 is the source block 2, tensor for tensor.
  const Tensor& a = param(*m, "model.layers.2.mlp.up_proj.weight");
  const Tensor& b = param(*p.model, "model.layers.1.mlp.up_proj.weight");
  EXPECT_TRUE(std::equal(a.data<float>(), a.data<float>() + a.numel(), b.data<float>()));

  spec.keep_layers = {0, 3};
  spec.keep_experts = 3;
  const std::vector<int32_t> calib = random_ids(16, 50, 14);
  const ExpertLoads loads = calibration_scores(*m, calib, 1, 16, RankBy::kFrequency);
  const PruneResult q = prune_model(*m, loads, spec);
  ASSERT_EQ(q.kept.size(), 1u);
  EXPECT_EQ(q.kept[0].first, 3);  // named by its source block
  EXPECT_EQ(q.model->config().layers[1].moe_config.num_experts, 3);
  EXPECT_EQ(q.after.total, q.model->params().num_elements());
  const Tensor& r = param(*q.model, "model.layers.1.mlp.gate.weight");
  const Tensor& s = param(*m, "model.layers.3.mlp.gate.weight");
  for (int j = 0; j < 3; ++j)
    EXPECT_TRUE(std::equal(r.data<float>() + j * 16, r.data<float>() + (j + 1) * 16,
                           s.data<float>() + q.kept[0].second[j] * 16));
}

TEST(Prune, RefusesBadSpecs) {
  const ModelConfig c = ModelConfig::from_json(JsonReader::from_string(kConfig, "prune_test"));
  const auto refuses = [&](const PruneSpec& spec, const std::string& expected) {
    try {
      check_prune_spec(c, spec);
      ADD_FAILURE() << "accepted; expected: " << expected;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
    }
  };
  refuses(experts_spec(1), "--keep-experts 1 must be in [top_k = 2, 6)");  // fewer than top_k
  refuses(experts_spec(6), "--keep-experts 6 must be in [top_k = 2, 6)");  // nothing removed
  refuses(experts_spec(9), "--keep-experts 9 must be in [top_k = 2, 6)");  // K > E
  refuses(PruneSpec{}, "nothing to prune");
  PruneSpec layers;
  layers.keep_layers = {0, 2};
  refuses(layers, "--keep-layers: layer 2 is outside [0, 2)");
  layers.keep_layers = {-1};
  refuses(layers, "--keep-layers: layer -1 is outside [0, 2)");
  layers.keep_layers = {1, 1};
  refuses(layers, "--keep-layers: the layers must be increasing");
  EXPECT_NO_THROW(check_prune_spec(c, experts_spec(3)));
  EXPECT_THROW(parse_rank_by("weight"), Error);
  EXPECT_EQ(parse_rank_by("gate-mass"), RankBy::kGateMass);
  // Expert scores are needed for --keep-experts.
  auto m = make_model(kConfig, 4);
  EXPECT_THROW(prune_model(*m, {}, experts_spec(3)), Error);
}

}  // namespace
}  // namespace moex::train
