// One serving scenario for Model::forward_paged, run on the CPU (tests/unit/model_paged_test.cpp)
// and on the GPU (tests/gpu/model_cuda_test.cpp): three sequences of 20, 13 and 9 tokens in
// shuffled blocks of a 24-block pool (4 positions a block), the first step prefills a chunk of
// one, the whole second and a chunk of the third together, the second step decodes the first
// while the third's prefill finishes, then the first decodes alone. After every step, `check` gets
// each sequence's logits from the step and from the full forward of that sequence alone at the
// same position. The step's next tokens must be those the host sampler draws from its logits:
// the first sequence greedy (the argmax), the second with temperature and top-k, the third with
// top-p, the draw counter advancing each step. table_width > 0 pads the block tables (and, on a
// GPU, replays decode steps, sampling included, from captured CUDA graphs). run_following_steps
// below checks steps launched ahead the same way on both devices.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/sample.h"
#include "model/model.h"
#include "ops/sample.h"

namespace moex::testing {

// check(what, paged_logits [V], full_logits [V]); ids holds the three sequences, 20 tokens apart.
inline void run_paged_serving_scenario(
    model::Model& m, const std::vector<int32_t>& ids,
    const std::function<void(const std::string&, const std::vector<float>&,
                             const std::vector<float>&)>& check,
    int64_t table_width = 0) {
  const int64_t vocab = m.config().vocab_size, stride = 20, block_size = 4;
  const int64_t total[] = {20, 13, 9};
  const std::vector<std::vector<int32_t>> blocks = {{3, 10, 5, 1, 20}, {0, 7, 12, 2}, {15, 4, 9}};
  model::PagedKV kv = m.make_paged_kv(/*num_blocks=*/24, block_size);
  kv.table_width = table_width;
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
      for (int64_t t = 0; t < n; ++t) step_ids.push_back(ids[s * stride + done[s] + t]);
      which.push_back(s);
    }
    std::vector<float> last(seqs.size() * vocab);
    std::vector<int32_t> next(seqs.size(), -1);
    std::vector<ops::SampleParams> sampling(seqs.size());
    for (size_t i = 0; i < which.size(); ++i) {
      sampling[i].temperature = which[i] == 0 ? 0.0 : which[i] == 1 ? 0.8 : 1.5;
      sampling[i].top_k = which[i] == 1 ? 5 : 0;
      sampling[i].top_p = which[i] == 2 ? 0.7 : 1.0;
      sampling[i].seed = 17 + which[i];
      sampling[i].draw = step;
    }
    m.forward_paged(step_ids.data(), seqs, kv, last.data(), next.data(), sampling.data());
    for (size_t i = 0; i < which.size(); ++i) {
      const int s = which[i];
      const float* row = last.data() + i * vocab;
      const ops::SampleParams& p = sampling[i];
      const int32_t want =
          cpu::sample_row(row, vocab, p.temperature, p.top_k, p.top_p, p.seed, p.draw);
      if (s == 0 && want != std::max_element(row, row + vocab) - row)
        throw std::logic_error("paged scenario: the greedy token is not the argmax");
      if (next[i] != want)
        throw std::logic_error("paged scenario: step " + std::to_string(step) + " sequence " +
                               std::to_string(s) + " drew " + std::to_string(next[i]) +
                               ", the host sampler " + std::to_string(want));
      done[s] += plan[step][s];
      if (done[s] > total[s]) throw std::logic_error("paged scenario: plan past a sequence");
      std::vector<float> full(done[s] * vocab);
      m.logits(ids.data() + s * stride, 1, done[s], full.data());
      check("step " + std::to_string(step) + " sequence " + std::to_string(s) + " at position " +
                std::to_string(done[s] - 1),
            std::vector<float>(last.begin() + i * vocab, last.begin() + (i + 1) * vocab),
            std::vector<float>(full.end() - vocab, full.end()));
    }
  }
}

// Decode steps launched ahead (Model::launch_paged with ids_follow_last: ids taken on the device
// from the last step's sampled tokens, collected one step later, with another forward of the
// model between launch and collect) and the same steps fed their ids from the host, on two models
// with the same weights. Two sequences, the prompt's first `split` tokens and the rest, in three
// blocks each, then `steps` greedy decode steps. Returns {the ahead model's tokens, the fed
// model's}, both [steps, 2].
struct FollowingTokens {
  std::vector<int32_t> ahead, fed;
};
inline FollowingTokens run_following_steps(model::Model& ahead, model::Model& fed,
                                           const std::vector<int32_t>& prompt, int64_t split,
                                           int64_t steps, int64_t block_size,
                                           int64_t table_width) {
  const std::vector<int32_t> blocks0 = {0, 1, 2}, blocks1 = {3, 4, 5};
  const int64_t rest = static_cast<int64_t>(prompt.size()) - split;
  auto make_kv = [&](model::Model& m) {
    model::PagedKV kv = m.make_paged_kv(/*num_blocks=*/6, block_size);
    kv.table_width = table_width;
    return kv;
  };
  model::PagedKV kv_ahead = make_kv(ahead), kv_fed = make_kv(fed);
  auto prefill = [&](model::Model& m, model::PagedKV& kv) {
    std::vector<int32_t> next(2);
    m.forward_paged(prompt.data(), {{0, split, blocks0.data(), 3}, {0, rest, blocks1.data(), 3}},
                    kv, nullptr, next.data());
    return next;
  };
  auto decode_step = [&](int64_t k) {  // step k: each sequence's k-th generated token goes in
    return std::vector<model::SequenceSlice>{{split + k, 1, blocks0.data(), 3},
                                             {rest + k, 1, blocks1.data(), 3}};
  };
  FollowingTokens out;
  std::vector<int32_t> tokens = prefill(fed, kv_fed);
  for (int64_t k = 0; k < steps; ++k) {
    fed.forward_paged(tokens.data(), decode_step(k), kv_fed, nullptr, tokens.data());
    out.fed.insert(out.fed.end(), tokens.begin(), tokens.end());
  }
  const std::vector<int32_t> first = prefill(ahead, kv_ahead);
  ahead.launch_paged(first.data(), decode_step(0), kv_ahead, nullptr);
  std::vector<int32_t> next(2);
  std::vector<float> logits(prompt.size() * static_cast<size_t>(ahead.config().vocab_size));
  for (int64_t k = 1; k < steps; ++k) {
    ahead.launch_paged(nullptr, decode_step(k), kv_ahead, nullptr, /*ids_follow_last=*/true);
    if (ahead.paged_steps_in_flight() != 2) throw std::logic_error("two steps should be in flight");
    ahead.collect_paged(next.data());
    out.ahead.insert(out.ahead.end(), next.begin(), next.end());
    // Another user of the model in between: it rewrites the step's activation memory.
    ahead.logits(prompt.data(), 1, static_cast<int64_t>(prompt.size()), logits.data());
  }
  ahead.collect_paged(next.data());
  out.ahead.insert(out.ahead.end(), next.begin(), next.end());
  return out;
}

}  // namespace moex::testing
