// Model::forward_paged on the CPU against the full forward: three sequences in shuffled blocks of a
// paged pool, prefilled in chunks while another decodes, then decoded one token at a time; after
// every step each sequence's last logits must equal the full forward of that sequence alone.
// (tests/gpu/model_cuda_test.cpp runs the same scenario on the GPU.)
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/json_reader.h"
#include "core/rng.h"
#include "model/model.h"

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
  const int64_t vocab = config.vocab_size, bs = 4, len = 20;
  std::vector<int32_t> ids(3 * len);
  for (size_t i = 0; i < ids.size(); ++i)
    ids[i] = static_cast<int32_t>(philox_u32(7, 1, i) % vocab);
  const int64_t total[] = {20, 13, 9};
  const std::vector<std::vector<int32_t>> blocks = {{3, 10, 5, 1, 20}, {0, 7, 12, 2}, {15, 4, 9}};
  model::PagedKV kv = m.make_paged_kv(/*num_blocks=*/24, bs);
  int64_t done[] = {0, 0, 0};
  // New tokens per sequence in each step (0: not in this step).
  std::vector<std::vector<int64_t>> plan = {{12, 13, 4}, {1, 0, 5}};
  for (int i = 0; i < 7; ++i) plan.push_back({1, 0, 0});
  for (size_t step = 0; step < plan.size(); ++step) {
    std::vector<model::SequenceSlice> seqs;
    std::vector<int32_t> step_ids;
    std::vector<int> which;
    for (int s = 0; s < 3; ++s) {
      const int64_t n = plan[step][s];
      if (n == 0) continue;
      seqs.push_back({done[s], n, blocks[s].data(), static_cast<int64_t>(blocks[s].size())});
      for (int64_t t = 0; t < n; ++t) step_ids.push_back(ids[s * len + done[s] + t]);
      which.push_back(s);
    }
    std::vector<float> last(seqs.size() * vocab);
    m.forward_paged(step_ids.data(), seqs, kv, last.data());
    for (size_t i = 0; i < which.size(); ++i) {
      const int s = which[i];
      done[s] += plan[step][s];
      ASSERT_LE(done[s], total[s]);
      std::vector<float> full(done[s] * vocab);
      m.logits(ids.data() + s * len, 1, done[s], full.data());
      EXPECT_LT(rel_l2(last.data() + i * vocab, full.data() + (done[s] - 1) * vocab, vocab), 1e-5)
          << "step " << step << " sequence " << s << " at position " << done[s] - 1;
    }
  }
}

}  // namespace
}  // namespace moex
