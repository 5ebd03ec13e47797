#include "ops/rope.h"

#include "cpu/rope.h"
#include "ops/device_dispatch.h"
#include "ops/profile.h"

#if MOEX_WITH_CUDA
#include "cuda/rope.h"
#endif

namespace moex::ops {
namespace {

void rotate(const char* op, bool backward, const Tensor& x, int64_t start_pos,
            const Tensor& positions, double theta, const Tensor& y) {
  const Device dev = detail::common_device(op, {&x, &y});
  const ProfileScope profile(op, dev);
  MOEX_CHECK(x.ndim() == 4, op, ": x must be [B, T, H, Dh], got ", x.shape().str());
  detail::expect(op, "x", x, detail::compute_dtype(dev), x.numel());
  detail::expect(op, "y", y, detail::compute_dtype(dev), x.numel());
  if (positions.defined()) {
    MOEX_CHECK(x.dim(0) == 1, op, ": a position per token needs x [1, T, H, Dh], got ",
               x.shape().str());
    MOEX_CHECK(positions.dtype() == DType::kI32 && positions.numel() == x.dim(1) &&
                   positions.device() == dev,
               op, ": positions must be i32 [", x.dim(1), "] on ", dev.str());
  }
  const int32_t* pos = positions.defined() ? positions.data<int32_t>() : nullptr;
  if (dev.is_cpu()) {
    cpu::RopeShape s{x.dim(0), x.dim(1), x.dim(2), x.dim(3), start_pos, theta};
    s.positions = pos;
    if (backward)
      cpu::rope_backward<float>(x.data<float>(), s, y.data<float>());
    else
      cpu::rope_forward<float>(x.data<float>(), s, y.data<float>());
    return;
  }
  MOEX_CUDA_TWIN(op, {
    cuda::RopeParams p{x.dim(0), x.dim(1), x.dim(2), x.dim(3), start_pos, theta};
    p.positions = pos;
    if (backward)
      cuda::rope_backward_bf16(x.raw_data(), y.raw_data(), p, detail::stream(dev));
    else
      cuda::rope_forward_bf16(x.raw_data(), y.raw_data(), p, detail::stream(dev));
  });
}

}  // namespace

void rope(const Tensor& x, int64_t start_pos, double theta, const Tensor& y) {
  rotate("rope", false, x, start_pos, Tensor(), theta, y);
}

void rope(const Tensor& x, const Tensor& positions, double theta, const Tensor& y) {
  rotate("rope", false, x, 0, positions, theta, y);
}

void rope_backward(const Tensor& dy, int64_t start_pos, double theta, const Tensor& dx) {
  rotate("rope_backward", true, dy, start_pos, Tensor(), theta, dx);
}

}  // namespace moex::ops
