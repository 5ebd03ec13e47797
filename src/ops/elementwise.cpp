#include "ops/elementwise.h"

#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "cpu/parallel.h"
#include "ops/device_dispatch.h"
#include "ops/profile.h"

#if MOEX_WITH_CUDA
#include "cuda/activation.h"
#include "cuda/cuda_check.h"
#include "cuda/elementwise.h"
#endif

namespace moex::ops {

void add(const Tensor& a, const Tensor& b, const Tensor& y) {
  const Device dev = detail::common_device("add", {&a, &b, &y});
  const ProfileScope profile("add", dev);
  const DType dt = detail::compute_dtype(dev);
  const int64_t n = y.numel();
  detail::expect("add", "a", a, dt, n);
  detail::expect("add", "b", b, dt, n);
  detail::expect("add", "y", y, dt, n);
  if (dev.is_cpu()) {
    const float *ap = a.data<float>(), *bp = b.data<float>();
    float* yp = y.data<float>();
#pragma omp parallel for if (n >= cpu::kMinParallelWork)
    for (int64_t i = 0; i < n; ++i) yp[i] = ap[i] + bp[i];
    return;
  }
  MOEX_CUDA_TWIN("add",
                 cuda::add_bf16(a.raw_data(), b.raw_data(), y.raw_data(), n, detail::stream(dev)));
}

void add_into(const Tensor& x, const Tensor& y) {
  const Device dev = detail::common_device("add_into", {&x, &y});
  const ProfileScope profile("add_into", dev);
  const int64_t n = y.numel();
  if (x.dtype() == DType::kF32 && y.dtype() == DType::kBF16) {  // into a bf16 gradient
    const Tensor xb = Tensor::empty(x.shape(), DType::kBF16, dev);
    copy(x, xb);
    add(xb.view(y.shape()), y, y);
    return;
  }
  detail::expect("add_into", "x", x, y.dtype(), n);
  if (y.dtype() != DType::kF32) {
    add(x, y, y);
    return;
  }
  if (dev.is_cpu()) {
    const float* xp = x.data<float>();
    float* yp = y.data<float>();
#pragma omp parallel for if (n >= cpu::kMinParallelWork)
    for (int64_t i = 0; i < n; ++i) yp[i] += xp[i];
    return;
  }
  MOEX_CUDA_TWIN("add_into",
                 cuda::add_f32(x.data<float>(), y.data<float>(), n, detail::stream(dev)));
}

namespace {

bool is_float(DType t) {
  return t == DType::kF32 || t == DType::kBF16;
}

// Host-side cast between f32 and bf16 (same count).
void cast_on_host(const Tensor& src, const Tensor& dst) {
  const int64_t n = src.numel();
  if (src.dtype() == DType::kF32) {
    const float* s = src.data<float>();
    uint16_t* d = static_cast<uint16_t*>(dst.raw_data());
#pragma omp parallel for simd schedule(static) if (n >= (int64_t{1} << 20))
    for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(s[i]);
  } else {
    const uint16_t* s = static_cast<const uint16_t*>(src.raw_data());
    float* d = dst.data<float>();
#pragma omp parallel for simd schedule(static) if (n >= (int64_t{1} << 20))
    for (int64_t i = 0; i < n; ++i) d[i] = bf16_to_f32(s[i]);
  }
}

}  // namespace

void copy(const Tensor& src, const Tensor& dst) {
  MOEX_CHECK(src.defined() && dst.defined() && src.numel() == dst.numel(),
             "copy: ", src.shape().str(), " into ", dst.shape().str());
  const Device sd = src.device(), dd = dst.device();
  const ProfileScope profile("copy", dd.is_cuda() ? dd : sd);
  if (src.dtype() == dst.dtype()) {
    if (sd.is_cpu() && dd.is_cpu()) {
      if (src.raw_data() != dst.raw_data())
        std::memmove(dst.raw_data(), src.raw_data(), src.nbytes());
      return;
    }
    MOEX_CUDA_TWIN("copy", {
      if (sd.is_cuda() && dd.is_cuda()) {
        CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), src.nbytes(),
                                   cudaMemcpyDeviceToDevice, detail::stream(dd)));
      } else {
        // cuda::copy_bytes is a plain cudaMemcpy: ordered after the (blocking) model stream.
        cuda::copy_bytes(dst.raw_data(), dd, src.raw_data(), sd, src.nbytes());
      }
    });
    return;
  }
  MOEX_CHECK(is_float(src.dtype()) && is_float(dst.dtype()), "copy: cannot cast ",
             dtype_name(src.dtype()), " to ", dtype_name(dst.dtype()));
  if (sd.is_cpu() && dd.is_cpu()) {
    cast_on_host(src, dst);
    return;
  }
  if (sd == dd) {
    MOEX_CUDA_TWIN("copy", {
      if (src.dtype() == DType::kF32)
        cuda::f32_to_bf16(src.data<float>(), dst.raw_data(), src.numel(), detail::stream(dd));
      else
        cuda::bf16_to_f32(src.raw_data(), dst.data<float>(), src.numel(), detail::stream(dd));
    });
    return;
  }
  // Across devices with a cast: cast on the host side.
  if (sd.is_cpu()) {
    Tensor staged = Tensor::empty(src.shape(), dst.dtype());
    cast_on_host(src, staged);
    copy(staged, dst);
  } else {
    Tensor staged = Tensor::empty(src.shape(), src.dtype());
    copy(src, staged);
    cast_on_host(staged, dst);
  }
}

void zero(const Tensor& t) {
  if (!t.defined()) return;
  const ProfileScope profile("zero", t.device());
  if (t.device().is_cpu()) {
    std::memset(t.raw_data(), 0, t.nbytes());
    return;
  }
  MOEX_CUDA_TWIN(
      "zero", CUDA_CHECK(cudaMemsetAsync(t.raw_data(), 0, t.nbytes(), detail::stream(t.device()))));
}

void copy_columns(const Tensor& src, int64_t src_col, const Tensor& dst, int64_t dst_col,
                  int64_t cols) {
  const Device dev = detail::common_device("copy_columns", {&src, &dst});
  const ProfileScope profile("copy_columns", dev);
  MOEX_CHECK(src.ndim() == 2 && dst.ndim() == 2 && src.dim(0) == dst.dim(0) &&
                 src.dtype() == dst.dtype() && src_col >= 0 && dst_col >= 0 &&
                 src_col + cols <= src.dim(1) && dst_col + cols <= dst.dim(1),
             "copy_columns: ", cols, " columns from ", src.shape().str(), " at ", src_col, " into ",
             dst.shape().str(), " at ", dst_col);
  const size_t es = dtype_size(src.dtype());
  const int64_t rows = src.dim(0);
  const char* s = static_cast<const char*>(src.raw_data()) + src_col * es;
  char* d = static_cast<char*>(dst.raw_data()) + dst_col * es;
  const size_t spitch = src.dim(1) * es, dpitch = dst.dim(1) * es, width = cols * es;
  if (dev.is_cpu()) {
#pragma omp parallel for if (rows * cols >= cpu::kMinParallelWork)
    for (int64_t r = 0; r < rows; ++r) std::memcpy(d + r * dpitch, s + r * spitch, width);
    return;
  }
  MOEX_CUDA_TWIN("copy_columns",
                 CUDA_CHECK(cudaMemcpy2DAsync(d, dpitch, s, spitch, width, rows,
                                              cudaMemcpyDeviceToDevice, detail::stream(dev))));
}

double sum(const Tensor& t) {
  detail::expect("sum", "t", t, DType::kF32, t.numel());
  const int64_t n = t.numel();
  if (t.device().is_cpu()) {
    const float* p = t.data<float>();
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += p[i];
    return s;
  }
  double result = 0;
  MOEX_CUDA_TWIN("sum", {
    const Device dev = t.device();
    Tensor ws = Tensor::empty(Shape{static_cast<int64_t>(cuda::sum_workspace_bytes(n)) + 1},
                              DType::kU8, dev);
    Tensor out = Tensor::empty(Shape{1}, DType::kF32, dev);
    cuda::sum_f32(t.data<float>(), n, out.data<float>(), ws.raw_data(), detail::stream(dev));
    result = out.to(Device::cpu()).data<float>()[0];
  });
  return result;
}

}  // namespace moex::ops
