// Inputs and outputs of a whole model for tests that compare two models (pruned against
// original, reloaded against saved).
#pragma once

#include <cstdint>
#include <vector>

#include "core/rng.h"
#include "model/model.h"

namespace moex::testing {

// n ids drawn uniformly from [0, vocab) by the counter stream `seed`.
inline std::vector<int32_t> random_ids(size_t n, int64_t vocab, uint64_t seed) {
  std::vector<int32_t> ids(n);
  for (size_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>(philox_u32(seed, 0, i) % vocab);
  return ids;
}

// The model's logits [batch, ids.size() / batch, vocab] for `ids` as `batch` equal rows.
inline std::vector<float> model_logits(model::Model& m, const std::vector<int32_t>& ids,
                                       int64_t batch) {
  std::vector<float> out(ids.size() * static_cast<size_t>(m.config().vocab_size));
  m.logits(ids.data(), batch, static_cast<int64_t>(ids.size()) / batch, out.data());
  return out;
}

}  // namespace moex::testing
