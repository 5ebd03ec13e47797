// Model::forward_paged on the CPU against the full forward of each sequence alone, in the scenario
// of tests/paged_serving_scenario.h (tests/gpu/model_cuda_test.cpp runs it on the GPU).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/json_reader.h"
#include "core/rng.h"
#include "cpu_kernel_checks.h"
#include "model/model.h"
#include "paged_serving_scenario.h"

namespace moex {
namespace {

// Capacity-mode MoE every other layer, RoPE, per-head q/k norm, GQA. Serving keeps every route; an
// eval capacity factor of E/k (C >= T) keeps every route in the full forward too.
const char* kConfig = R"({
    "vocab_size": 256, "hidden_size": 64, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2,
    "max_seq_len": 64, "ffn_size": 96, "positions": "rope", "norm": "rmsnorm",
    "activation": "swiglu", "tie_embeddings": true, "qk_norm": "per_head",
    "moe": {"layer_freq": 2, "num_experts": 8, "top_k": 2, "ffn_size": 64, "renormalize": true,
            "capacity_factor": 2.0, "eval_capacity_factor": 4.0}})";

double rel_l2(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

TEST(ModelPaged, ServingStepsEqualTheFullForwardOfEachSequence) {
  const ModelConfig config =
      ModelConfig::from_json(JsonReader::from_string(kConfig, "model_paged_test"));
  model::Model m(config);
  m.init_weights(5);
  std::vector<int32_t> ids(3 * 20);
  for (size_t i = 0; i < ids.size(); ++i)
    ids[i] = static_cast<int32_t>(philox_u32(7, 1, i) % config.vocab_size);
  // Tables as wide as each step needs, then padded to a fixed width (as the scheduler does).
  for (const int64_t width : {0, 6}) {
    testing::run_paged_serving_scenario(
        m, ids,
        [width](const std::string& what, const std::vector<float>& paged,
                const std::vector<float>& full) {
          EXPECT_LT(rel_l2(paged.data(), full.data(), static_cast<int64_t>(full.size())), 1e-5)
              << what << ", table width " << width;
        },
        width);
  }
}

TEST(ModelPaged, BadStepsAreClearErrors) {
  const ModelConfig config =
      ModelConfig::from_json(JsonReader::from_string(kConfig, "model_paged_test"));
  model::Model m(config);
  m.init_weights(5);
  model::PagedKV kv = m.make_paged_kv(/*num_blocks=*/8, /*block_size=*/4);
  kv.table_width = 2;
  const std::vector<int32_t> blocks = {0, 1, 2};
  std::vector<float> logits(config.vocab_size);
  const auto step = [&](int32_t token, int64_t num_blocks) {
    const std::vector<int32_t> ids = {token};
    m.forward_paged(ids.data(), {{0, 1, blocks.data(), num_blocks}}, kv, logits.data());
  };
  testing::expect_error_naming([&] { step(7, 3); }, {"wider than the paged KV's table_width (2)"});
  testing::expect_error_naming([&] { step(256, 1); },
                               {"token 256 at row 0 is outside the vocabulary of 256"});
  EXPECT_NO_THROW(step(7, 1));
}

// Steps launched ahead give the tokens of steps fed their ids from the host
// (testing::run_following_steps, also run on the GPU).
TEST(ModelPaged, FollowingStepsEqualStepsFedTheirTokens) {
  const ModelConfig config =
      ModelConfig::from_json(JsonReader::from_string(kConfig, "model_paged_test"));
  model::Model ahead(config), fed(config);
  ahead.init_weights(5);
  fed.init_weights(5);
  const testing::FollowingTokens t = testing::run_following_steps(
      ahead, fed, {11, 200, 37, 5, 90, 64, 3}, /*split=*/4, /*steps=*/6, /*block_size=*/4,
      /*table_width=*/0);
  EXPECT_EQ(t.ahead.size(), 12u);
  EXPECT_EQ(t.ahead, t.fed);
}

// Misusing launch_paged / collect_paged is a clear error.
TEST(ModelPaged, LaunchAndCollectMisuseAreClearErrors) {
  const ModelConfig config =
      ModelConfig::from_json(JsonReader::from_string(kConfig, "model_paged_test"));
  model::Model m(config);
  m.init_weights(5);
  model::PagedKV kv = m.make_paged_kv(8, 4);
  const std::vector<int32_t> blocks0 = {0, 1, 2}, blocks1 = {3, 4, 5}, ids = {7, 8};
  const std::vector<model::SequenceSlice> two = {{0, 1, blocks0.data(), 3},
                                                 {0, 1, blocks1.data(), 3}};
  const std::vector<model::SequenceSlice> one = {{1, 1, blocks0.data(), 3}};
  std::vector<int32_t> next(2);
  testing::expect_error_naming([&] { m.collect_paged(next.data()); }, {"no step in flight"});
  testing::expect_error_naming([&] { m.launch_paged(nullptr, two, kv, nullptr, true); },
                               {"ids follow the last step only for a decode step of its sequences"});
  m.launch_paged(ids.data(), two, kv, nullptr);
  testing::expect_error_naming([&] { m.launch_paged(nullptr, one, kv, nullptr, true); },
                               {"ids follow the last step only for a decode step of its sequences"});
  testing::expect_error_naming(
      [&] { m.forward_paged(ids.data(), two, kv, nullptr, next.data()); },
      {"1 launched steps are not collected"});
  m.launch_paged(nullptr, two, kv, nullptr, true);
  testing::expect_error_naming([&] { m.launch_paged(nullptr, two, kv, nullptr, true); },
                               {"collect a step first (two are in flight)"});
}

}  // namespace
}  // namespace moex
