#include "ops/argmax.h"

#include "cpu/argmax.h"
#include "ops/device_dispatch.h"
#include "ops/profile.h"

#if MOEX_WITH_CUDA
#include "cuda/argmax.h"
#endif

namespace moex::ops {

void argmax_rows(const Tensor& x, const Tensor& out) {
  const Device dev = detail::common_device("argmax_rows", {&x, &out});
  const ProfileScope profile("argmax_rows", dev);
  MOEX_CHECK(x.ndim() == 2 && x.dim(1) > 0, "argmax_rows: x must be [S, V] with V > 0, got ",
             x.shape().str());
  const int64_t rows = x.dim(0), cols = x.dim(1);
  detail::expect("argmax_rows", "x", x, DType::kF32, rows * cols);
  detail::expect("argmax_rows", "out", out, DType::kI32, rows);
  if (dev.is_cpu()) {
    cpu::argmax_rows(x.data<float>(), rows, cols, out.data<int32_t>());
    return;
  }
  MOEX_CUDA_TWIN("argmax_rows", cuda::argmax_rows_f32(x.data<float>(), rows, cols,
                                                      out.data<int32_t>(), detail::stream(dev)));
}

}  // namespace moex::ops
