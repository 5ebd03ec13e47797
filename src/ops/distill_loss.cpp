#include "ops/distill_loss.h"

#include "cpu/distill_loss.h"
#include "cpu/parallel.h"
#include "ops/cross_entropy.h"
#include "ops/device_dispatch.h"
#include "ops/profile.h"

#if MOEX_WITH_CUDA
#include "cuda/distill_loss.h"
#endif

namespace moex::ops {
namespace {

// The checks both ops share: student and teacher f32 [n, V] on `dev`.
void check_logits(const char* what, const Tensor& student, const Tensor& teacher,
                  float temperature) {
  MOEX_CHECK(student.ndim() == 2, what, ": student logits must be [n, V], got ",
             student.shape().str());
  const int64_t n = student.dim(0), vocab = student.dim(1);
  MOEX_CHECK(teacher.defined() && teacher.shape() == student.shape(), what,
             ": teacher logits must be [", n, ", ", vocab, "], got ",
             teacher.defined() ? teacher.shape().str() : "none");
  detail::expect(what, "student", student, DType::kF32, n * vocab);
  detail::expect(what, "teacher", teacher, DType::kF32, n * vocab);
  MOEX_CHECK(temperature > 0, what, ": temperature must be > 0, got ", temperature);
}

// distill_loss (lse undefined: each row's log-sum-exps formed from its columns) and
// distill_partial_loss (lse f64 [n, 2] given).
void distill_rows(const char* what, const Tensor& student, const Tensor& teacher,
                  const Tensor& targets, float temperature, const Tensor& lse, float grad_scale,
                  const Tensor& loss_rows, const Tensor& dstudent) {
  const Device dev = detail::common_device(what, {&student, &teacher, &lse, &loss_rows, &dstudent});
  const ProfileScope profile(what, dev);
  check_logits(what, student, teacher, temperature);
  const int64_t n = student.dim(0), vocab = student.dim(1);
  detail::expect(what, "loss_rows", loss_rows, DType::kF32, n);
  if (lse.defined()) detail::expect(what, "lse", lse, DType::kF64, 2 * n);
  if (dstudent.defined()) {
    detail::expect(what, "dstudent", dstudent, detail::compute_dtype(dev), n * vocab);
    MOEX_CHECK(
        dstudent.raw_data() != student.raw_data() && dstudent.raw_data() != teacher.raw_data(),
        what, ": dstudent must not alias the logits it is computed from");
  }
  MOEX_CHECK(targets.defined() && targets.device().is_cpu() && targets.dtype() == DType::kI32 &&
                 targets.numel() == n,
             what, ": targets must be i32 [", n, "] on the host");
  const int32_t* t = targets.data<int32_t>();
  if (dev.is_cpu()) {
    const float* sp = student.data<float>();
    const float* tp = teacher.data<float>();
    const double* lp = lse.defined() ? lse.data<double>() : nullptr;
    float* loss = loss_rows.data<float>();
    float* dp = dstudent.defined() ? dstudent.data<float>() : nullptr;
#pragma omp parallel for if (n * vocab >= cpu::kMinParallelWork)
    for (int64_t i = 0; i < n; ++i) {
      if (t[i] == kIgnoreIndex) {
        loss[i] = 0.0f;
        continue;
      }
      float* d = dp ? dp + i * vocab : nullptr;
      loss[i] = lp ? static_cast<float>(cpu::distill_columns(sp + i * vocab, tp + i * vocab, vocab,
                                                             temperature, lp[2 * i], lp[2 * i + 1],
                                                             grad_scale, d))
                   : cpu::distill_loss_row<float>(sp + i * vocab, tp + i * vocab, vocab,
                                                  temperature, grad_scale, d);
    }
    return;
  }
  MOEX_CUDA_TWIN(what, {
    const Tensor dev_targets = targets.to(dev);
    cuda::distill_loss_rows(
        student.data<float>(), teacher.data<float>(), dev_targets.data<int32_t>(), n, vocab,
        kIgnoreIndex, temperature, grad_scale, lse.defined() ? lse.data<double>() : nullptr,
        loss_rows.data<float>(), dstudent.defined() ? dstudent.raw_data() : nullptr,
        detail::stream(dev));
  });
}

}  // namespace

void distill_loss(const Tensor& student, const Tensor& teacher, const Tensor& targets,
                  float temperature, float grad_scale, const Tensor& loss_rows,
                  const Tensor& dstudent) {
  distill_rows("distill_loss", student, teacher, targets, temperature, Tensor(), grad_scale,
               loss_rows, dstudent);
}

void distill_partial_loss(const Tensor& student, const Tensor& teacher, const Tensor& targets,
                          float temperature, const Tensor& lse, float grad_scale,
                          const Tensor& loss_rows, const Tensor& dstudent) {
  MOEX_CHECK(lse.defined(), "distill_partial_loss: lse [n, 2] f64 is required");
  distill_rows("distill_partial_loss", student, teacher, targets, temperature, lse, grad_scale,
               loss_rows, dstudent);
}

void distill_partial_stats(const Tensor& student, const Tensor& teacher, float temperature,
                           const Tensor& stats) {
  const Device dev = detail::common_device("distill_partial_stats", {&student, &teacher, &stats});
  const ProfileScope profile("distill_partial_stats", dev);
  check_logits("distill_partial_stats", student, teacher, temperature);
  const int64_t n = student.dim(0), vocab = student.dim(1);
  detail::expect("distill_partial_stats", "stats", stats, DType::kF32, 4 * n);
  if (dev.is_cpu()) {
    const float* sp = student.data<float>();
    const float* tp = teacher.data<float>();
    float* st = stats.data<float>();
    const double inv_tau = 1.0 / static_cast<double>(temperature);
#pragma omp parallel for if (n * vocab >= cpu::kMinParallelWork)
    for (int64_t i = 0; i < n; ++i) {
      const cpu::MaxSum s = cpu::max_sum_scaled(sp + i * vocab, vocab, inv_tau);
      const cpu::MaxSum t = cpu::max_sum_scaled(tp + i * vocab, vocab, inv_tau);
      const double v[4] = {s.max, s.sum, t.max, t.sum};
      for (int j = 0; j < 4; ++j) st[4 * i + j] = static_cast<float>(v[j]);
    }
    return;
  }
  MOEX_CUDA_TWIN("distill_partial_stats", {
    cuda::distill_stats_rows(student.data<float>(), teacher.data<float>(), n, vocab, temperature,
                             stats.data<float>(), detail::stream(dev));
  });
}

}  // namespace moex::ops
