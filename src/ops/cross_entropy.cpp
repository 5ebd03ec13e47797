#include "ops/cross_entropy.h"

#include "cpu/cross_entropy.h"
#include "cpu/parallel.h"
#include "ops/device_dispatch.h"
#include "ops/profile.h"

#if MOEX_WITH_CUDA
#include "cuda/cross_entropy.h"
#endif

namespace moex::ops {
namespace {

// targets i32 [n] on the host.
const int32_t* host_targets(const char* op, const Tensor& targets, int64_t n) {
  MOEX_CHECK(targets.defined() && targets.device().is_cpu() && targets.dtype() == DType::kI32 &&
                 targets.numel() == n,
             op, ": targets must be i32 [", n, "] on the host");
  return targets.data<int32_t>();
}

// host_targets, each ignore_index or in [0, vocab).
const int32_t* checked_targets(const char* op, const Tensor& targets, int64_t n, int64_t vocab) {
  const int32_t* t = host_targets(op, targets, n);
  for (int64_t i = 0; i < n; ++i)
    MOEX_CHECK(t[i] == kIgnoreIndex || (t[i] >= 0 && t[i] < vocab), op, ": target ", t[i],
               " at row ", i, " is outside the vocabulary of ", vocab);
  return t;
}

}  // namespace

void cross_entropy(const Tensor& logits, const Tensor& targets, float grad_scale,
                   const Tensor& loss_rows, const Tensor& dlogits) {
  const Device dev = detail::common_device("cross_entropy", {&logits, &loss_rows, &dlogits});
  const ProfileScope profile("cross_entropy", dev);
  MOEX_CHECK(logits.ndim() == 2, "cross_entropy: logits must be [n, V], got ",
             logits.shape().str());
  const int64_t n = logits.dim(0), vocab = logits.dim(1);
  detail::expect("cross_entropy", "logits", logits, DType::kF32, n * vocab);
  detail::expect("cross_entropy", "loss_rows", loss_rows, DType::kF32, n);
  if (dlogits.defined())
    detail::expect("cross_entropy", "dlogits", dlogits, detail::compute_dtype(dev), n * vocab);
  const int32_t* t = checked_targets("cross_entropy", targets, n, vocab);
  if (dev.is_cpu()) {
    const float* lp = logits.data<float>();
    float* loss = loss_rows.data<float>();
    float* dp = dlogits.defined() ? dlogits.data<float>() : nullptr;
    // One row per call: the kernel's mean over one counted row is that row's loss, and its
    // gradient scale dloss / 1 is grad_scale.
#pragma omp parallel for if (n * vocab >= cpu::kMinParallelWork)
    for (int64_t i = 0; i < n; ++i) {
      const bool counted = t[i] != kIgnoreIndex;
      loss[i] = cpu::cross_entropy_forward_backward<float>(
          lp + i * vocab, t + i, 1, vocab, kIgnoreIndex, counted ? grad_scale : 0.0f,
          dp ? dp + i * vocab : nullptr);
    }
    return;
  }
  MOEX_CUDA_TWIN("cross_entropy", {
    const Tensor dev_targets = targets.to(dev);
    cuda::cross_entropy_rows(logits.data<float>(), dev_targets.data<int32_t>(), n, vocab,
                             kIgnoreIndex, grad_scale, loss_rows.data<float>(),
                             dlogits.defined() ? dlogits.raw_data() : nullptr,
                             detail::stream(dev));
  });
}

void cross_entropy_partial_stats(const Tensor& logits, const Tensor& targets, int64_t vocab_begin,
                                 int64_t vocab_size, const Tensor& stats) {
  const char* op = "cross_entropy_partial_stats";
  const Device dev = detail::common_device(op, {&logits, &stats});
  const ProfileScope profile(op, dev);
  MOEX_CHECK(logits.ndim() == 2 && vocab_begin >= 0 && vocab_begin + logits.dim(1) <= vocab_size,
             op, ": logits ", logits.shape().str(), " from column ", vocab_begin,
             " are not a part of a ", vocab_size, "-token vocabulary");
  const int64_t n = logits.dim(0), vl = logits.dim(1);
  detail::expect(op, "logits", logits, DType::kF32, n * vl);
  detail::expect(op, "stats", stats, DType::kF32, n * 3);
  const int32_t* t = checked_targets(op, targets, n, vocab_size);
  if (dev.is_cpu()) {
    cpu::cross_entropy_partial_stats(logits.data<float>(), t, n, vl, vocab_begin, kIgnoreIndex,
                                     stats.data<float>());
    return;
  }
  MOEX_CUDA_TWIN(op, {
    const Tensor dev_targets = targets.to(dev);
    cuda::cross_entropy_partial_stats(logits.data<float>(), dev_targets.data<int32_t>(), n, vl,
                                      vocab_begin, kIgnoreIndex, stats.data<float>(),
                                      detail::stream(dev));
  });
}

void cross_entropy_partial_grad(const Tensor& logits, const Tensor& targets, int64_t vocab_begin,
                                const Tensor& lse, float grad_scale, const Tensor& dlogits) {
  const char* op = "cross_entropy_partial_grad";
  const Device dev = detail::common_device(op, {&logits, &lse, &dlogits});
  const ProfileScope profile(op, dev);
  MOEX_CHECK(logits.ndim() == 2, op, ": logits must be [n, Vl], got ", logits.shape().str());
  const int64_t n = logits.dim(0), vl = logits.dim(1);
  detail::expect(op, "logits", logits, DType::kF32, n * vl);
  detail::expect(op, "lse", lse, DType::kF32, n);
  detail::expect(op, "dlogits", dlogits, detail::compute_dtype(dev), n * vl);
  const int32_t* t = host_targets(op, targets, n);
  if (dev.is_cpu()) {
    cpu::cross_entropy_partial_grad(logits.data<float>(), t, lse.data<float>(), n, vl, vocab_begin,
                                    kIgnoreIndex, grad_scale, dlogits.data<float>());
    return;
  }
  MOEX_CUDA_TWIN(op, {
    const Tensor dev_targets = targets.to(dev);
    cuda::cross_entropy_partial_grad(logits.data<float>(), dev_targets.data<int32_t>(),
                                     lse.data<float>(), n, vl, vocab_begin, kIgnoreIndex,
                                     grad_scale, dlogits.raw_data(), detail::stream(dev));
  });
}

}  // namespace moex::ops
