#include "ops/rope.h"

#include <utility>

#include "cpu/rope.h"
#include "ops/device_dispatch.h"
#include "ops/elementwise.h"
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

// split_qkv / merge_qkv_backward's shapes: q [B, T, H, Dh], k and v [B, T, Hkv, Dh] and qkv
// [B * T, Q + 2K] in the device's compute dtype.
void check_qkv(const char* op, const Device& dev, const Tensor& qkv, const Tensor& q,
               const Tensor& k, const Tensor& v) {
  MOEX_CHECK(q.ndim() == 4 && k.ndim() == 4 && k.shape() == v.shape() && q.dim(0) == k.dim(0) &&
                 q.dim(1) == k.dim(1) && q.dim(3) == k.dim(3) && q.dim(3) % 2 == 0 &&
                 qkv.ndim() == 2 && qkv.dim(0) == q.dim(0) * q.dim(1) &&
                 qkv.dim(1) == q.dim(2) * q.dim(3) + 2 * k.dim(2) * k.dim(3),
             op, ": q ", q.shape().str(), ", k ", k.shape().str(), ", v ", v.shape().str(),
             " and qkv ", qkv.shape().str(),
             " are not [B, T, H, Dh], [B, T, Hkv, Dh] x 2 and [B * T, ", "(H + 2 Hkv) * Dh]");
  const DType dt = detail::compute_dtype(dev);
  for (const auto& [name, t] :
       {std::pair<const char*, const Tensor*>{"qkv", &qkv}, {"q", &q}, {"k", &k}, {"v", &v}})
    detail::expect(op, name, *t, dt, t->numel());
}

#if MOEX_WITH_CUDA
cuda::RopeQkvTrainParams qkv_params(const Tensor& qkv, const Tensor& q, const Tensor& k,
                                    const Tensor& v, int64_t start_pos, double theta) {
  cuda::RopeQkvTrainParams p;
  p.qkv = qkv.raw_data();
  p.q = q.raw_data();
  p.k = k.raw_data();
  p.v = v.raw_data();
  p.rows = qkv.dim(0);
  p.seq_len = q.dim(1);
  p.start_pos = start_pos;
  p.q_width = q.dim(2) * q.dim(3);
  p.kv_width = k.dim(2) * k.dim(3);
  p.head_dim = q.dim(3);
  p.theta = theta;
  return p;
}
#endif

}  // namespace

void split_qkv(const Tensor& qkv, int64_t start_pos, double theta, const Tensor& q, const Tensor& k,
               const Tensor& v) {
  const char* op = "split_qkv";
  const Device dev = detail::common_device(op, {&qkv, &q, &k, &v});
  check_qkv(op, dev, qkv, q, k, v);
  const int64_t n = qkv.dim(0), qd = q.dim(2) * q.dim(3), kd = k.dim(2) * k.dim(3);
  if (dev.is_cpu()) {  // the unfused steps
    copy_columns(qkv, 0, q.view(Shape{n, qd}), 0, qd);
    copy_columns(qkv, qd, k.view(Shape{n, kd}), 0, kd);
    copy_columns(qkv, qd + kd, v.view(Shape{n, kd}), 0, kd);
    if (theta > 0) {
      rope(q, start_pos, theta, q);
      rope(k, start_pos, theta, k);
    }
    return;
  }
  const ProfileScope profile(op, dev);
  MOEX_CUDA_TWIN(op, cuda::rope_qkv_split_bf16(qkv_params(qkv, q, k, v, start_pos, theta),
                                               detail::stream(dev)));
}

void merge_qkv_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, int64_t start_pos,
                        double theta, const Tensor& dqkv) {
  const char* op = "merge_qkv_backward";
  const Device dev = detail::common_device(op, {&dqkv, &dq, &dk, &dv});
  check_qkv(op, dev, dqkv, dq, dk, dv);
  const int64_t n = dqkv.dim(0), qd = dq.dim(2) * dq.dim(3), kd = dk.dim(2) * dk.dim(3);
  if (dev.is_cpu()) {  // the unfused steps, dq and dk rotated in copies (the inputs stay)
    const Tensor rq = theta > 0 ? Tensor::empty(dq.shape(), dq.dtype()) : dq;
    const Tensor rk = theta > 0 ? Tensor::empty(dk.shape(), dk.dtype()) : dk;
    if (theta > 0) {
      rope_backward(dq, start_pos, theta, rq);
      rope_backward(dk, start_pos, theta, rk);
    }
    copy_columns(rq.view(Shape{n, qd}), 0, dqkv, 0, qd);
    copy_columns(rk.view(Shape{n, kd}), 0, dqkv, qd, kd);
    copy_columns(dv.view(Shape{n, kd}), 0, dqkv, qd + kd, kd);
    return;
  }
  const ProfileScope profile(op, dev);
  MOEX_CUDA_TWIN(op, cuda::rope_qkv_merge_backward_bf16(
                         qkv_params(dqkv, dq, dk, dv, start_pos, theta), detail::stream(dev)));
}

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
