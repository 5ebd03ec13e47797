#include "ops/grad_output.h"

#include "ops/device_dispatch.h"
#include "ops/elementwise.h"

namespace moex::ops::detail {

GradOutput::GradOutput(const char* op, const char* what, const Tensor& grad, int64_t numel)
    : grad_(grad) {
  if (!grad.defined()) return;
  if (!expect_f32_or_gpu_bf16(op, what, grad, numel)) {
    f32_ = grad;
    return;
  }
  f32_ = Tensor::empty(grad.shape(), DType::kF32, grad.device());
  zero(f32_);
}

void GradOutput::finish() const {
  if (f32_.defined() && f32_.raw_data() != grad_.raw_data()) add_into(f32_, grad_);
}

}  // namespace moex::ops::detail
