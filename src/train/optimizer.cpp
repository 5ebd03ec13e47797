#include "train/optimizer.h"

#include <cmath>

#include "dist/communicator.h"
#include "model/model.h"
#include "ops/elementwise.h"

namespace moex::train {

AdamW::AdamW(const ParamBuffer& params, const OptimizerConfig& config) : config_(config) {
  const Device dev = params.flat().device();
  exp_avg_ = Tensor::empty(params.flat().shape(), DType::kF32, dev);
  exp_avg_sq_ = Tensor::empty(params.flat().shape(), DType::kF32, dev);
  ops::zero(exp_avg_);
  ops::zero(exp_avg_sq_);
  const char* p0 = static_cast<const char*>(params.flat().raw_data());
  std::vector<ops::AdamWSegment> segments;
  for (int i = 0; i < params.size(); ++i) {
    const Tensor& t = params.tensor(i);
    ops::AdamWSegment s;
    s.offset = (static_cast<const char*>(t.raw_data()) - p0) / static_cast<int64_t>(sizeof(float));
    s.count = t.numel();
    s.weight_decay = t.ndim() >= 2 ? static_cast<float>(config_.weight_decay) : 0.0f;
    segments.push_back(s);
  }
  segments_ = std::make_unique<ops::AdamWSegments>(std::move(segments), dev);
}

double AdamW::step(ParamBuffer& params, const ParamBuffer& grads, double lr, int64_t step,
                   const ParamBuffer* working_copy) {
  const double norm = std::sqrt(ops::sum_of_squares(grads.flat()));  // fixed order: same bits
  apply(params, grads, lr, step, working_copy, norm);
  return norm;
}

void AdamW::apply(ParamBuffer& params, const ParamBuffer& grads, double lr, int64_t step,
                  const ParamBuffer* working_copy, double norm) {
  const double clip =
      (config_.grad_clip > 0 && norm > config_.grad_clip) ? config_.grad_clip / (norm + 1e-6) : 1.0;
  ops::AdamWHyper h;
  h.lr = lr;
  h.beta1 = config_.beta1;
  h.beta2 = config_.beta2;
  h.eps = config_.eps;
  h.step = step;
  h.grad_scale = clip;
  ops::adamw_step(params.flat(), working_copy ? working_copy->flat() : Tensor(), grads.flat(),
                  exp_avg_, exp_avg_sq_, *segments_, h);
  params.flat().mark_written();
}

double AdamW::step(model::Model& model, double lr, int64_t step) {
  const bool copy = model.device().is_cuda();
  const ParamBuffer* working_copy = copy ? &model.compute_params() : nullptr;
  dist::Communicator* group = model.expert_group();
  if (group == nullptr || group->size() == 1)
    return this->step(model.params(), model.grads(), lr, step, working_copy);
  // Squares of the replicated tensors, and of this rank's experts summed over the group.
  const ParamBuffer& grads = model.grads();
  double sums[2] = {0, 0};  // non-expert, expert
  for (int i = 0; i < grads.size(); ++i)
    sums[model.is_expert_param(i)] += ops::sum_of_squares(grads.tensor(i));
  group->all_reduce_sum(&sums[1], 1);
  const double norm = std::sqrt(sums[0] + sums[1]);
  apply(model.params(), grads, lr, step, working_copy, norm);
  return norm;
}

}  // namespace moex::train
