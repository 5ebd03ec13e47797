#include "train/optimizer.h"

#include <cmath>
#include <cstring>

#include "cpu/adamw.h"
#include "cpu/reduce.h"

namespace moex::train {

AdamW::AdamW(const ParamBuffer& params, const OptimizerConfig& config) : config_(config) {
  exp_avg_ = Tensor::zeros(params.flat().shape(), DType::kF32);
  exp_avg_sq_ = Tensor::zeros(params.flat().shape(), DType::kF32);
}

double AdamW::step(ParamBuffer& params, const ParamBuffer& grads, double lr, int64_t step) {
  const float* g = grads.flat().data<float>();
  const int64_t total = grads.flat().numel();
  const double norm = std::sqrt(cpu::sum_of_squares(g, total));  // same bits for any thread count
  const double clip =
      (config_.grad_clip > 0 && norm > config_.grad_clip) ? config_.grad_clip / (norm + 1e-6) : 1.0;

  float* p0 = params.flat().data<float>();
  float* m0 = exp_avg_.data<float>();
  float* v0 = exp_avg_sq_.data<float>();
  for (int i = 0; i < params.size(); ++i) {
    const Tensor& t = params.tensor(i);
    const int64_t offset = static_cast<float*>(t.raw_data()) - p0;
    cpu::AdamWConfig c;
    c.lr = lr;
    c.beta1 = config_.beta1;
    c.beta2 = config_.beta2;
    c.eps = config_.eps;
    c.weight_decay = t.ndim() >= 2 ? config_.weight_decay : 0.0;
    c.grad_scale = clip;
    cpu::adamw_step<float>(p0 + offset, g + offset, m0 + offset, v0 + offset, t.numel(), step, c);
  }
  params.flat().mark_written();
  return norm;
}

}  // namespace moex::train
