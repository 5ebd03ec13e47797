#include "ops/activation.h"

#include "cpu/activation.h"
#include "ops/device_dispatch.h"
#include "ops/profile.h"

#if MOEX_WITH_CUDA
#include "cuda/activation.h"
#endif

namespace moex::ops {
namespace {

// Rows and F of a [N, F1] first-projection output whose activation is [N, F].
void shape_of(const char* op, Activation kind, const Tensor& h, const Tensor& a, int64_t* rows,
              int64_t* ffn) {
  *ffn = a.dim(-1);
  *rows = a.numel() / *ffn;
  const int64_t f1 = kind == Activation::kSwiGLU ? 2 * *ffn : *ffn;
  const DType dt = detail::compute_dtype(h.device());
  detail::expect(op, "h", h, dt, *rows * f1);
  detail::expect(op, "a", a, dt, *rows * *ffn);
}

}  // namespace

void activation(Activation kind, const Tensor& h, const Tensor& a) {
  const Device dev = detail::common_device("activation", {&h, &a});
  const ProfileScope profile("activation", dev);
  int64_t rows = 0, f = 0;
  shape_of("activation", kind, h, a, &rows, &f);
  const bool exact = kind == Activation::kGeluExact;
  if (dev.is_cpu()) {
    if (kind == Activation::kSwiGLU)
      cpu::swiglu_forward<float>(h.data<float>(), a.data<float>(), rows, f);
    else
      cpu::gelu_forward<float>(h.data<float>(), a.data<float>(), rows * f, exact);
    return;
  }
  MOEX_CUDA_TWIN("activation", {
    if (kind == Activation::kSwiGLU)
      cuda::swiglu_forward_bf16(h.raw_data(), a.raw_data(), rows, f, detail::stream(dev));
    else
      cuda::gelu_forward_bf16(h.raw_data(), a.raw_data(), rows, f, exact, detail::stream(dev));
  });
}

void activation_backward(Activation kind, const Tensor& h, const Tensor& da, const Tensor& dh,
                         const Tensor& a) {
  const Device dev = detail::common_device("activation_backward", {&h, &da, &dh, &a});
  const ProfileScope profile("activation_backward", dev);
  int64_t rows = 0, f = 0;
  shape_of("activation_backward", kind, h, da, &rows, &f);
  detail::expect("activation_backward", "dh", dh, h.dtype(), h.numel());
  if (a.defined()) detail::expect("activation_backward", "a", a, da.dtype(), da.numel());
  const bool exact = kind == Activation::kGeluExact;
  if (dev.is_cpu()) {
    float* a_out = a.defined() ? a.data<float>() : nullptr;
    if (kind == Activation::kSwiGLU)
      cpu::swiglu_backward<float>(h.data<float>(), da.data<float>(), dh.data<float>(), rows, f,
                                  a_out);
    else
      cpu::gelu_backward<float>(h.data<float>(), da.data<float>(), dh.data<float>(), rows * f,
                                exact, a_out);
    return;
  }
  MOEX_CUDA_TWIN("activation_backward", {
    void* a_out = a.defined() ? a.raw_data() : nullptr;
    if (kind == Activation::kSwiGLU)
      cuda::swiglu_backward_bf16(h.raw_data(), da.raw_data(), dh.raw_data(), a_out, rows, f,
                                 detail::stream(dev));
    else
      cuda::gelu_backward_bf16(h.raw_data(), da.raw_data(), dh.raw_data(), a_out, rows, f, exact,
                               detail::stream(dev));
  });
}

}  // namespace moex::ops
