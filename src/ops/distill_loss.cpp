#include "ops/distill_loss.h"

#include "cpu/distill_loss.h"
#include "ops/cross_entropy.h"
#include "ops/device_dispatch.h"
#include "ops/profile.h"

#if MOEX_WITH_CUDA
#include "cuda/distill_loss.h"
#endif

namespace moex::ops {

void distill_loss(const Tensor& student, const Tensor& teacher, const Tensor& targets,
                  float temperature, float grad_scale, const Tensor& loss_rows,
                  const Tensor& dstudent) {
  const Device dev =
      detail::common_device("distill_loss", {&student, &teacher, &loss_rows, &dstudent});
  const ProfileScope profile("distill_loss", dev);
  MOEX_CHECK(student.ndim() == 2, "distill_loss: student logits must be [n, V], got ",
             student.shape().str());
  const int64_t n = student.dim(0), vocab = student.dim(1);
  MOEX_CHECK(teacher.defined() && teacher.shape() == student.shape(),
             "distill_loss: teacher logits must be [", n, ", ", vocab, "], got ",
             teacher.defined() ? teacher.shape().str() : "none");
  detail::expect("distill_loss", "student", student, DType::kF32, n * vocab);
  detail::expect("distill_loss", "teacher", teacher, DType::kF32, n * vocab);
  detail::expect("distill_loss", "loss_rows", loss_rows, DType::kF32, n);
  if (dstudent.defined()) {
    detail::expect("distill_loss", "dstudent", dstudent, detail::compute_dtype(dev), n * vocab);
    MOEX_CHECK(
        dstudent.raw_data() != student.raw_data() && dstudent.raw_data() != teacher.raw_data(),
        "distill_loss: dstudent must not alias the logits it is computed from");
  }
  MOEX_CHECK(temperature > 0, "distill_loss: temperature must be > 0, got ", temperature);
  MOEX_CHECK(targets.defined() && targets.device().is_cpu() && targets.dtype() == DType::kI32 &&
                 targets.numel() == n,
             "distill_loss: targets must be i32 [", n, "] on the host");
  const int32_t* t = targets.data<int32_t>();
  if (dev.is_cpu()) {
    const float* sp = student.data<float>();
    const float* tp = teacher.data<float>();
    float* loss = loss_rows.data<float>();
    float* dp = dstudent.defined() ? dstudent.data<float>() : nullptr;
#pragma omp parallel for
    for (int64_t i = 0; i < n; ++i) {
      if (t[i] == kIgnoreIndex) {
        loss[i] = 0.0f;
        continue;
      }
      loss[i] = cpu::distill_loss_row<float>(sp + i * vocab, tp + i * vocab, vocab, temperature,
                                             grad_scale, dp ? dp + i * vocab : nullptr);
    }
    return;
  }
  MOEX_CUDA_TWIN("distill_loss", {
    const Tensor dev_targets = targets.to(dev);
    cuda::distill_loss_rows(
        student.data<float>(), teacher.data<float>(), dev_targets.data<int32_t>(), n, vocab,
        kIgnoreIndex, temperature, grad_scale, loss_rows.data<float>(),
        dstudent.defined() ? dstudent.raw_data() : nullptr, detail::stream(dev));
  });
}

}  // namespace moex::ops
