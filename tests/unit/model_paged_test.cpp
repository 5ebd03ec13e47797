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

// Steps launched ahead (Model::launch_paged with ids_follow_last, collected later) give the tokens
// of steps fed their ids from the host, even with another forward of the model in between; the
// API's misuses are clear errors.
TEST(ModelPaged, FollowingStepsEqualStepsFedTheirTokens) {
  const ModelConfig config =
      ModelConfig::from_json(JsonReader::from_string(kConfig, "model_paged_test"));
  model::Model fed(config), ahead(config);
  fed.init_weights(5);
  ahead.init_weights(5);
  model::PagedKV kv_fed = fed.make_paged_kv(8, 4), kv_ahead = ahead.make_paged_kv(8, 4);
  const std::vector<int32_t> blocks0 = {0, 1, 2}, blocks1 = {3, 4, 5};
  const std::vector<int32_t> prompt = {11, 200, 37, 5, 90, 64, 3};  // 4 + 3 tokens
  auto prefill = [&](model::Model& m, model::PagedKV& kv) {
    std::vector<int32_t> next(2);
    m.forward_paged(prompt.data(), {{0, 4, blocks0.data(), 3}, {0, 3, blocks1.data(), 3}}, kv,
                    nullptr, next.data());
    return next;
  };
  auto decode_step = [&](int64_t k) {  // step k: sequence 0 at 4 + k, sequence 1 at 3 + k
    return std::vector<model::SequenceSlice>{{4 + k, 1, blocks0.data(), 3},
                                             {3 + k, 1, blocks1.data(), 3}};
  };
  std::vector<int32_t> tokens = prefill(fed, kv_fed), want;
  for (int64_t k = 0; k < 6; ++k) {
    fed.forward_paged(tokens.data(), decode_step(k), kv_fed, nullptr, tokens.data());
    want.insert(want.end(), tokens.begin(), tokens.end());
  }
  const std::vector<int32_t> first = prefill(ahead, kv_ahead);
  ahead.launch_paged(first.data(), decode_step(0), kv_ahead, nullptr);
  std::vector<int32_t> got, next(2);
  for (int64_t k = 1; k < 6; ++k) {
    ahead.launch_paged(nullptr, decode_step(k), kv_ahead, nullptr, /*ids_follow_last=*/true);
    EXPECT_EQ(ahead.paged_steps_in_flight(), 2);
    ahead.collect_paged(next.data());
    got.insert(got.end(), next.begin(), next.end());
    std::vector<float> logits(4 * config.vocab_size);  // another user of the model in between
    ahead.logits(prompt.data(), 1, 4, logits.data());
  }
  ahead.collect_paged(next.data());
  got.insert(got.end(), next.begin(), next.end());
  EXPECT_EQ(got, want);

  testing::expect_error_naming([&] { ahead.collect_paged(next.data()); }, {"no step in flight"});
  ahead.launch_paged(first.data(), decode_step(6), kv_ahead, nullptr);
  const std::vector<model::SequenceSlice> one = {{10, 1, blocks0.data(), 3}};
  testing::expect_error_naming(
      [&] { ahead.launch_paged(nullptr, one, kv_ahead, nullptr, true); },
      {"ids follow the last step only for a decode step of its sequences"});
  testing::expect_error_naming(
      [&] { ahead.forward_paged(first.data(), decode_step(7), kv_ahead, nullptr, next.data()); },
      {"1 launched steps are not collected"});
  ahead.launch_paged(nullptr, decode_step(7), kv_ahead, nullptr, true);
  testing::expect_error_naming(
      [&] { ahead.launch_paged(nullptr, decode_step(8), kv_ahead, nullptr, true); },
      {"collect a step first (two are in flight)"});
}

}  // namespace
}  // namespace moex
