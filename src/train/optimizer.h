// AdamW over the model's parameter buffer: exp_avg and exp_avg_sq share the buffer's layout and
// live on its device. Weight decay applies to matrices (>= 2 dims) only, as is usual for
// transformers. One fused pass over every tensor (ops/adamw.h); on a GPU model it also rewrites
// the bf16 working copy the kernels compute with.
#pragma once

#include <memory>

#include "core/arena.h"
#include "ops/adamw.h"
#include "train/train_config.h"

namespace moex::model {
class Model;
}

namespace moex::train {

class AdamW {
 public:
  AdamW(const ParamBuffer& params, const OptimizerConfig& config);

  // Clips the global gradient norm to config.grad_clip (if > 0), then updates every parameter.
  // Returns the gradient norm before clipping. `step` is 1-based. working_copy: the bf16 copy of
  // params on CUDA (null on the CPU).
  double step(ParamBuffer& params, const ParamBuffer& grads, double lr, int64_t step,
              const ParamBuffer* working_copy = nullptr);
  // The same on a model's master weights, gradients and working copy. Under expert parallelism
  // the norm covers every expert of the expert group (each rank holds E/ep of them), so every
  // rank clips by the same global norm; every rank of the group must call it.
  double step(model::Model& model, double lr, int64_t step);

  Tensor& exp_avg() { return exp_avg_; }  // [total] f32, the buffer's layout, on its device
  Tensor& exp_avg_sq() { return exp_avg_sq_; }

 private:
  // The update of step() once the global gradient norm is known.
  void apply(ParamBuffer& params, const ParamBuffer& grads, double lr, int64_t step,
             const ParamBuffer* working_copy, double norm);

  OptimizerConfig config_;
  Tensor exp_avg_, exp_avg_sq_;
  std::unique_ptr<ops::AdamWSegments> segments_;
};

}  // namespace moex::train
