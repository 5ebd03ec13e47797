// AdamW over the model's parameter buffer: exp_avg and exp_avg_sq share the buffer's layout.
// Weight decay applies to matrices (>= 2 dims) only, as is usual for transformers.
#pragma once

#include "core/arena.h"
#include "train/train_config.h"

namespace moex::train {

class AdamW {
 public:
  AdamW(const ParamBuffer& params, const OptimizerConfig& config);

  // Clips the global gradient norm to config.grad_clip (if > 0), then updates every parameter.
  // Returns the gradient norm before clipping. `step` is 1-based.
  double step(ParamBuffer& params, const ParamBuffer& grads, double lr, int64_t step);

  Tensor& exp_avg() { return exp_avg_; }  // [total] f32, the buffer's layout
  Tensor& exp_avg_sq() { return exp_avg_sq_; }

 private:
  OptimizerConfig config_;
  Tensor exp_avg_, exp_avg_sq_;
};

}  // namespace moex::train
