#include "ops/attention.h"

#include <vector>

#include "cpu/attention.h"
#include "ops/device_dispatch.h"
#include "ops/profile.h"

#if MOEX_WITH_CUDA
#include "cuda/attention.h"
#endif

namespace moex::ops {
namespace {

struct Dims {
  int64_t batch, q_len, kv_len, heads, kv_heads, head_dim;
};

Dims check_dims(const char* op, const Tensor& q, const Tensor& k, const Tensor& v) {
  MOEX_CHECK(q.ndim() == 4 && k.ndim() == 4 && v.ndim() == 4, op,
             ": q, k, v must be [B, T, heads, Dh], got ", q.shape().str(), " ", k.shape().str(),
             " ", v.shape().str());
  const Dims d{q.dim(0), q.dim(1), k.dim(1), q.dim(2), k.dim(2), q.dim(3)};
  MOEX_CHECK(k.shape() == v.shape() && k.dim(0) == d.batch && k.dim(3) == d.head_dim &&
                 d.kv_heads > 0 && d.heads % d.kv_heads == 0,
             op, ": q ", q.shape().str(), " does not fit k/v ", k.shape().str());
  const DType dt = detail::compute_dtype(q.device());
  detail::expect(op, "q", q, dt, q.numel());
  detail::expect(op, "k", k, dt, k.numel());
  detail::expect(op, "v", v, dt, v.numel());
  return d;
}

cpu::AttentionShape cpu_shape(const Dims& d, int64_t start_pos) {
  return {d.batch, d.q_len, d.kv_len, d.heads, d.kv_heads, d.head_dim, start_pos, 0.0};
}

#if MOEX_WITH_CUDA
cuda::AttentionParams cuda_params(const Dims& d, int64_t start_pos) {
  cuda::AttentionParams p;
  p.batch = d.batch;
  p.q_len = d.q_len;
  p.kv_len = d.kv_len;
  p.num_heads = d.heads;
  p.num_kv_heads = d.kv_heads;
  p.head_dim = d.head_dim;
  p.start_pos = start_pos;
  return p;
}
#endif

}  // namespace

Shape attention_saved_shape(const Device& device, int64_t batch, int64_t heads, int64_t q_len,
                            int64_t kv_len) {
  if (device.is_cpu()) return Shape{batch, heads, q_len, kv_len};
  return Shape{batch, heads, q_len};
}

void attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t start_pos,
               const Tensor& out, const Tensor& saved) {
  const Device dev = detail::common_device("attention", {&q, &k, &v, &out, &saved});
  const ProfileScope profile("attention", dev);
  const Dims d = check_dims("attention", q, k, v);
  MOEX_CHECK(start_pos >= 0 && start_pos + d.q_len <= d.kv_len, "attention: positions ", start_pos,
             "..", start_pos + d.q_len, " exceed the ", d.kv_len, " keys");
  detail::expect("attention", "out", out, detail::compute_dtype(dev), q.numel());
  detail::expect("attention", "saved", saved, DType::kF32,
                 attention_saved_shape(dev, d.batch, d.heads, d.q_len, d.kv_len).numel());
  if (dev.is_cpu()) {
    const cpu::AttentionShape s = cpu_shape(d, start_pos);
    cpu::attention_forward<float>(q.data<float>(), k.data<float>(), v.data<float>(), s,
                                  out.data<float>(), saved.data<float>());
    return;
  }
  MOEX_CUDA_TWIN("attention", {
    const cuda::AttentionParams p = cuda_params(d, start_pos);
    cuda::attention_forward_bf16(q.raw_data(), k.raw_data(), v.raw_data(), out.raw_data(),
                                 saved.data<float>(), p, detail::stream(dev));
  });
}

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& saved, const Tensor& dq, const Tensor& dk,
                        const Tensor& dv) {
  const Device dev =
      detail::common_device("attention_backward", {&dout, &q, &k, &v, &out, &saved, &dq, &dk, &dv});
  const ProfileScope profile("attention_backward", dev);
  const Dims d = check_dims("attention_backward", q, k, v);
  MOEX_CHECK(d.q_len == d.kv_len, "attention_backward: only the training case (Tq == Tk)");
  const DType dt = detail::compute_dtype(dev);
  detail::expect("attention_backward", "dout", dout, dt, q.numel());
  detail::expect("attention_backward", "dq", dq, dt, q.numel());
  detail::expect("attention_backward", "dk", dk, dt, k.numel());
  detail::expect("attention_backward", "dv", dv, dt, v.numel());
  if (dev.is_cpu()) {
    const cpu::AttentionShape s = cpu_shape(d, 0);
    std::vector<float> workspace(cpu::attention_backward_workspace_elems(s));
    cpu::attention_backward<float>(dout.data<float>(), q.data<float>(), k.data<float>(),
                                   v.data<float>(), saved.data<float>(), s, dq.data<float>(),
                                   dk.data<float>(), dv.data<float>(), workspace.data(),
                                   workspace.size());
    return;
  }
  MOEX_CUDA_TWIN("attention_backward", {
    const cuda::AttentionParams p = cuda_params(d, 0);
    Tensor ws =
        Tensor::empty(Shape{static_cast<int64_t>(cuda::attention_backward_workspace_bytes(p)) + 1},
                      DType::kU8, dev);
    cuda::attention_backward_bf16(dout.raw_data(), q.raw_data(), k.raw_data(), v.raw_data(),
                                  out.raw_data(), saved.data<float>(), dq.raw_data(), dk.raw_data(),
                                  dv.raw_data(), ws.raw_data(), p, detail::stream(dev));
  });
}

}  // namespace moex::ops
