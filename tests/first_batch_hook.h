// A training hook that records the ids of step 0's first micro-batch: the batch the trainer drew,
// for tests that recompute its loss independently of the trainer.
#pragma once

#include <cstdint>
#include <vector>

#include "train/trainer.h"

namespace moex::testing {

class FirstBatch : public train::TrainHooks {
 public:
  void before_forward(const int32_t* ids, int64_t batch, int64_t seq_len, int64_t step,
                      model::ForwardOptions&) override {
    if (step == 0 && ids_.empty()) {
      ids_.assign(ids, ids + batch * seq_len);
      batch_ = batch;
    }
  }
  std::vector<int32_t> ids_;  // [batch_, seq_len]
  int64_t batch_ = 0;
};

}  // namespace moex::testing
