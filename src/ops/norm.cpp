#include "ops/norm.h"

#include "cpu/norm.h"
#include "ops/device_dispatch.h"
#include "ops/elementwise.h"
#include "ops/grad_output.h"
#include "ops/profile.h"

#if MOEX_WITH_CUDA
#include "cuda/norm.h"
#endif

namespace moex::ops {

using detail::expect;

namespace {

// The forward's operands: x and y [rows, dim], weight (and bias) [dim] in the compute dtype, the
// fp32 statistics [rows]. Returns rows.
int64_t check_forward(const char* op, bool rms, DType dt, const Tensor& x, const Tensor& weight,
                      const Tensor& bias, const Tensor& y, const Tensor& mean, const Tensor& rstd) {
  const int64_t dim = weight.numel(), rows = x.numel() / dim;
  expect(op, "x", x, dt, rows * dim);
  expect(op, "weight", weight, dt, dim);
  expect(op, "y", y, dt, rows * dim);
  expect(op, "rstd", rstd, DType::kF32, rows);
  if (!rms) expect(op, "mean", mean, DType::kF32, rows);
  if (bias.defined()) expect(op, "bias", bias, dt, dim);
  return rows;
}

}  // namespace

void norm(bool rms, const Tensor& x, const Tensor& weight, const Tensor& bias, float eps,
          const Tensor& y, const Tensor& mean, const Tensor& rstd) {
  const char* op = rms ? "rms_norm" : "layer_norm";
  const Device dev = detail::common_device(op, {&x, &weight, &bias, &y, &mean, &rstd});
  const ProfileScope profile(op, dev);
  const int64_t dim = weight.numel();
  const int64_t rows =
      check_forward(op, rms, detail::compute_dtype(dev), x, weight, bias, y, mean, rstd);
  if (dev.is_cpu()) {
    if (rms)
      cpu::rmsnorm_forward<float>(x.data<float>(), weight.data<float>(), rows, dim, eps,
                                  y.data<float>(), rstd.data<float>());
    else
      cpu::layernorm_forward<float>(x.data<float>(), weight.data<float>(),
                                    bias.defined() ? bias.data<float>() : nullptr, rows, dim, eps,
                                    y.data<float>(), mean.data<float>(), rstd.data<float>());
    return;
  }
  MOEX_CUDA_TWIN(op, {
    if (rms)
      cuda::rmsnorm_forward_bf16(x.raw_data(), weight.raw_data(), rows, dim, eps, y.raw_data(),
                                 rstd.data<float>(), detail::stream(dev));
    else
      cuda::layernorm_forward_bf16(
          x.raw_data(), weight.raw_data(), bias.defined() ? bias.raw_data() : nullptr, rows, dim,
          eps, y.raw_data(), mean.data<float>(), rstd.data<float>(), detail::stream(dev));
  });
}

void add_norm(bool rms, const Tensor& x, const Tensor& res, const Tensor& weight,
              const Tensor& bias, float eps, const Tensor& sum, const Tensor& y, const Tensor& mean,
              const Tensor& rstd) {
  const char* op = "add_norm";
  const Device dev = detail::common_device(op, {&x, &res, &weight, &bias, &sum, &y, &mean, &rstd});
  if (dev.is_cpu()) {
    add(x, res, sum);
    norm(rms, sum, weight, bias, eps, y, mean, rstd);
    return;
  }
  const ProfileScope profile(op, dev);
  const DType dt = detail::compute_dtype(dev);
  const int64_t dim = weight.numel();
  const int64_t rows = check_forward(op, rms, dt, x, weight, bias, y, mean, rstd);
  expect(op, "res", res, dt, rows * dim);
  expect(op, "sum", sum, dt, rows * dim);
  MOEX_CUDA_TWIN(op, cuda::add_norm_forward_bf16(
                         rms, x.raw_data(), res.raw_data(), weight.raw_data(),
                         bias.defined() ? bias.raw_data() : nullptr, rows, dim, eps, sum.raw_data(),
                         y.raw_data(), rms ? nullptr : mean.data<float>(), rstd.data<float>(),
                         detail::stream(dev)));
}

void norm_backward(bool rms, const Tensor& dy, const Tensor& x, const Tensor& weight,
                   const Tensor& mean, const Tensor& rstd, const Tensor& dx, const Tensor& dweight,
                   const Tensor& dbias) {
  const char* op = rms ? "rms_norm_backward" : "layer_norm_backward";
  const Device dev =
      detail::common_device(op, {&dy, &x, &weight, &mean, &rstd, &dx, &dweight, &dbias});
  const ProfileScope profile(op, dev);
  const DType dt = detail::compute_dtype(dev);
  const int64_t dim = weight.numel(), rows = x.numel() / dim;
  expect(op, "dy", dy, dt, rows * dim);
  expect(op, "x", x, dt, rows * dim);
  expect(op, "dx", dx, dt, rows * dim);
  expect(op, "rstd", rstd, DType::kF32, rows);
  MOEX_CHECK(dweight.defined(), op, ": dweight is undefined");
  const detail::GradOutput dw(op, "dweight", dweight, dim), db(op, "dbias", dbias, dim);
  if (!rms) expect(op, "mean", mean, DType::kF32, rows);
  if (dev.is_cpu()) {
    if (rms)
      cpu::rmsnorm_backward<float>(dy.data<float>(), x.data<float>(), weight.data<float>(),
                                   rstd.data<float>(), rows, dim, dx.data<float>(), dw.data());
    else
      cpu::layernorm_backward<float>(dy.data<float>(), x.data<float>(), weight.data<float>(),
                                     mean.data<float>(), rstd.data<float>(), rows, dim,
                                     dx.data<float>(), dw.data(), db.data());
    return;
  }
  MOEX_CUDA_TWIN(op, {
    Tensor ws = Tensor::empty(
        Shape{static_cast<int64_t>(cuda::norm_backward_workspace_bytes(rows, dim)) + 1}, DType::kU8,
        dev);
    if (rms)
      cuda::rmsnorm_backward_bf16(dy.raw_data(), x.raw_data(), weight.raw_data(),
                                  rstd.data<float>(), rows, dim, dx.raw_data(), dw.data(),
                                  ws.raw_data(), detail::stream(dev));
    else
      cuda::layernorm_backward_bf16(
          dy.raw_data(), x.raw_data(), weight.raw_data(), mean.data<float>(), rstd.data<float>(),
          rows, dim, dx.raw_data(), dw.data(), db.data(), ws.raw_data(), detail::stream(dev));
    dw.finish();
    db.finish();
  });
}

}  // namespace moex::ops
