#include "ops/adamw.h"

#include <cstring>

#include "core/dtype.h"
#include "cpu/adamw.h"
#include "cpu/reduce.h"
#include "ops/device_dispatch.h"
#include "ops/profile.h"

#if MOEX_WITH_CUDA
#include "cuda/adamw.h"
#endif

namespace moex::ops {

#if MOEX_WITH_CUDA
static_assert(sizeof(AdamWSegment) == sizeof(cuda::AdamWSegment), "segment layouts differ");
#endif

AdamWSegments::AdamWSegments(std::vector<AdamWSegment> segments, const Device& device)
    : host_(std::move(segments)) {
  if (device.is_cpu()) return;
  Tensor bytes = Tensor::empty(Shape{static_cast<int64_t>(host_.size() * sizeof(AdamWSegment)) + 1},
                               DType::kU8);
  std::memcpy(bytes.raw_data(), host_.data(), host_.size() * sizeof(AdamWSegment));
  device_ = bytes.to(device);
}

namespace {

// Calls f with the host buffer's elements as stored: float*, or uint16_t* bf16 bits.
template <typename F>
void with_elements(const Tensor& t, F&& f) {
  if (t.dtype() == DType::kBF16)
    f(static_cast<uint16_t*>(t.raw_data()));
  else
    f(t.data<float>());
}

}  // namespace

void adamw_step(const Tensor& master, const Tensor& working_copy, const Tensor& grad,
                const Tensor& exp_avg, const Tensor& exp_avg_sq, const AdamWSegments& segments,
                const AdamWHyper& h) {
  const Device dev =
      detail::common_device("adamw_step", {&master, &working_copy, &grad, &exp_avg, &exp_avg_sq});
  const ProfileScope profile("adamw", dev);
  const int64_t n = master.numel();
  // Weights fp32, or bf16 (optimizer.master_dtype; on the host, ZeRO-Offload's tile of a GPU
  // model's bf16 weights), which then have no working copy.
  const bool bf16_master = master.dtype() == DType::kBF16;
  detail::expect("adamw_step", "weights", master, bf16_master ? DType::kBF16 : DType::kF32, n);
  MOEX_CHECK(!bf16_master || !working_copy.defined(),
             "adamw_step: bf16 weights are what the model reads; they take no working copy");
  // Gradients fp32, or bf16 (optimizer.grads_dtype).
  const bool bf16_grads = grad.dtype() == DType::kBF16;
  detail::expect("adamw_step", "gradients", grad, bf16_grads ? DType::kBF16 : DType::kF32, n);
  // Both moments fp32, or both bf16 (optimizer.moments_dtype).
  const bool bf16_moments = exp_avg.dtype() == DType::kBF16;
  for (const Tensor* t : {&exp_avg, &exp_avg_sq})
    detail::expect("adamw_step", "moments", *t, bf16_moments ? DType::kBF16 : DType::kF32, n);
  if (dev.is_cpu()) {
    // A host bf16 copy is ZeRO-Offload's upload buffer (docs/parallelism.md, "ZeRO-Offload").
    if (working_copy.defined())
      detail::expect("adamw_step", "working_copy", working_copy, DType::kBF16, n);
    uint16_t* copy =
        working_copy.defined() ? static_cast<uint16_t*>(working_copy.raw_data()) : nullptr;
    // The copy covers all n elements: what no segment updates (the buffer's alignment padding) is
    // cast from the master as it is, so the upload carries no stale values.
    int64_t covered = 0;
    auto cast_until = [&](int64_t end) {
      const float* p = master.data<float>();
      for (; covered < end; ++covered) copy[covered] = f32_to_bf16(p[covered]);
    };
    for (const AdamWSegment& s : segments.host()) {
      if (copy != nullptr) {
        MOEX_CHECK(s.offset >= covered,
                   "adamw_step: a working copy needs the segments in buffer order");
        cast_until(s.offset);
        covered = s.offset + s.count;
      }
      cpu::AdamWConfig c;
      c.lr = h.lr;
      c.beta1 = h.beta1;
      c.beta2 = h.beta2;
      c.eps = h.eps;
      c.weight_decay = s.weight_decay;
      c.grad_scale = h.grad_scale;
      // Each buffer's elements as stored: float, or uint16_t bf16 bits.
      with_elements(master, [&](auto* p) {
        with_elements(grad, [&](auto* g) {
          with_elements(exp_avg, [&](auto* m) {
            auto* v = static_cast<decltype(m)>(exp_avg_sq.raw_data());
            cpu::adamw_step(p + s.offset, g + s.offset, m + s.offset, v + s.offset, s.count, h.step,
                            c, copy != nullptr ? copy + s.offset : nullptr);
          });
        });
      });
    }
    if (copy != nullptr) cast_until(n);
    return;
  }
  MOEX_CUDA_TWIN("adamw_step", {
    if (!bf16_master) detail::expect("adamw_step", "working_copy", working_copy, DType::kBF16, n);
    cuda::AdamWStep s;
    s.lr = h.lr;
    s.beta1 = h.beta1;
    s.beta2 = h.beta2;
    s.eps = h.eps;
    s.step = h.step;
    s.grad_scale = h.grad_scale;
    s.bf16_moments = bf16_moments;
    s.bf16_grads = bf16_grads;
    s.bf16_master = bf16_master;
    cuda::adamw_multi_tensor(
        master.raw_data(), bf16_master ? nullptr : working_copy.raw_data(), grad.raw_data(),
        exp_avg.raw_data(), exp_avg_sq.raw_data(),
        static_cast<const cuda::AdamWSegment*>(segments.device_table().raw_data()),
        static_cast<int>(segments.host().size()), s, detail::stream(dev));
  });
}

double sum_of_squares(const Tensor& grad) {
  const bool bf16 = detail::expect_f32_or_gpu_bf16("sum_of_squares", "grad", grad, grad.numel());
  const ProfileScope profile("grad_norm", grad.device());
  if (grad.device().is_cpu()) return cpu::sum_of_squares(grad.data<float>(), grad.numel());
  double result = 0;
  MOEX_CUDA_TWIN("sum_of_squares", {
    const Device dev = grad.device();
    const int64_t n = grad.numel();
    Tensor ws = Tensor::empty(
        Shape{static_cast<int64_t>(cuda::sum_of_squares_workspace_bytes(n)) + 1}, DType::kU8, dev);
    Tensor out = Tensor::empty(Shape{1}, DType::kF64, dev);
    cuda::sum_of_squares(grad.raw_data(), bf16, n, out.data<double>(), ws.raw_data(),
                         detail::stream(dev));
    result = out.to(Device::cpu()).data<double>()[0];
  });
  return result;
}

}  // namespace moex::ops
