#include "ops/linear.h"

#include "cpu/gemm.h"
#include "cpu/parallel.h"
#include "ops/device_dispatch.h"
#include "ops/grad_output.h"
#include "ops/profile.h"

#if MOEX_WITH_CUDA
#include "cuda/elementwise.h"
#include "cuda/few_rows_linear.h"
#include "cuda/gemm.h"
#endif

namespace moex::ops {

using detail::expect;

void linear(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& y) {
  const Device dev = detail::common_device("linear", {&x, &w, &b, &y});
  const ProfileScope profile("linear", dev);
  const DType dt = detail::compute_dtype(dev);
  MOEX_CHECK(x.ndim() >= 1 && w.ndim() == 2, "linear: x ", x.shape().str(), ", w ",
             w.shape().str());
  const int64_t in = w.dim(1), out = w.dim(0), n = x.numel() / in;
  expect("linear", "x", x, dt, n * in);
  expect("linear", "w", w, dt, out * in);
  // The LM head writes fp32 logits on the GPU too (cross-entropy reads them in fp32).
  const bool y_f32 = y.dtype() == DType::kF32;
  expect("linear", "y", y, y_f32 ? DType::kF32 : dt, n * out);
  if (b.defined()) expect("linear", "b", b, dt, out);
  MOEX_CHECK(!(b.defined() && y_f32 && dev.is_cuda()), "linear: no bias with fp32 output on CUDA");
  if (dev.is_cpu()) {
    float* yp = y.data<float>();
    cpu::gemm<float>(false, true, n, out, in, 1.0f, x.data<float>(), w.data<float>(), 0.0f, yp);
    if (!b.defined()) return;
    const float* bp = b.data<float>();
#pragma omp parallel for if (n * out >= cpu::kMinParallelWork)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < out; ++j) yp[i * out + j] += bp[j];
    return;
  }
  MOEX_CUDA_TWIN("linear", {
    cuda::CudaContext& ctx = cuda::default_context(dev.ordinal);
    // A few rows of a small matrix (decoding's attention projections): cuBLAS's split-K kernels
    // leave bandwidth unused there; it takes the rest.
    cuda::FewRowsLinearParams few;
    few.x = x.raw_data();
    few.w = w.raw_data();
    few.bias = b.defined() ? b.raw_data() : nullptr;
    few.y = y.raw_data();
    few.y_f32 = y_f32;
    few.rows = n;
    few.n = out;
    few.k = in;
    if (cuda::few_rows_linear_wins(few)) {
      cuda::few_rows_linear(few, ctx.stream());
      return;
    }
    cuda::GemmShape s{false, true, n, out, in, in, in, out};
    cuda::gemm_bf16(ctx.cublas(), s, x.raw_data(), 0, w.raw_data(), 0, y.raw_data(), 0, y_f32, 1);
    if (b.defined()) cuda::add_bias_bf16(y.raw_data(), b.raw_data(), n, out, ctx.stream());
  });
}

void linear_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& dx,
                     bool accumulate_dx, const Tensor& dw, bool accumulate_dw, const Tensor& db) {
  const Device dev = detail::common_device("linear_backward", {&dy, &x, &w, &dx, &dw, &db});
  const ProfileScope profile("linear_backward", dev);
  const DType dt = detail::compute_dtype(dev);
  const int64_t in = w.dim(1), out = w.dim(0), n = dy.numel() / out;
  expect("linear_backward", "dy", dy, dt, n * out);
  if (dw.defined() || x.defined()) expect("linear_backward", "x", x, dt, n * in);
  expect("linear_backward", "w", w, dt, out * in);
  // dw f32, or bf16 on CUDA (optimizer.grads_dtype): the GEMM writes either.
  const bool dw_f32 =
      !dw.defined() || !detail::expect_f32_or_gpu_bf16("linear_backward", "dw", dw, out * in);
  if (dx.defined()) expect("linear_backward", "dx", dx, dt, n * in);
  const detail::GradOutput dbias("linear_backward", "db", db, out);
  if (dev.is_cpu()) {
    const float* dyp = dy.data<float>();
    if (dx.defined())
      cpu::gemm<float>(false, false, n, in, out, 1.0f, dyp, w.data<float>(),
                       accumulate_dx ? 1.0f : 0.0f, dx.data<float>());
    if (dw.defined())
      cpu::gemm<float>(true, false, out, in, n, 1.0f, dyp, x.data<float>(),
                       accumulate_dw ? 1.0f : 0.0f, dw.data<float>());
    if (!db.defined()) return;
    float* dbp = dbias.data();
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < out; ++j) dbp[j] += dyp[i * out + j];
    return;
  }
  MOEX_CUDA_TWIN("linear_backward", {
    cuda::CudaContext& ctx = cuda::default_context(dev.ordinal);
    if (dx.defined()) {
      cuda::GemmShape s{false, false, n, in, out, out, in, in};
      cuda::gemm_bf16(ctx.cublas(), s, dy.raw_data(), 0, w.raw_data(), 0, dx.raw_data(), 0, false,
                      1, 1.0f, accumulate_dx ? 1.0f : 0.0f);
    }
    if (dw.defined()) {
      cuda::GemmShape s{true, false, out, in, n, out, in, in};
      cuda::gemm_bf16(ctx.cublas(), s, dy.raw_data(), 0, x.raw_data(), 0, dw.raw_data(), 0, dw_f32,
                      1, 1.0f, accumulate_dw ? 1.0f : 0.0f);
    }
    if (db.defined()) {
      Tensor ws =
          Tensor::empty(Shape{static_cast<int64_t>(cuda::column_sum_workspace_bytes(n, out)) + 1},
                        DType::kU8, dev);
      cuda::column_sum_bf16(dy.raw_data(), n, out, dbias.data(), ws.raw_data(), ctx.stream());
      dbias.finish();
    }
  });
}

}  // namespace moex::ops
