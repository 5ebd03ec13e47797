#include "ops/embedding.h"

#include <vector>

#include "cpu/embedding.h"
#include "cpu/parallel.h"
#include "ops/device_dispatch.h"
#include "ops/grad_output.h"
#include "ops/profile.h"

#if MOEX_WITH_CUDA
#include "cuda/embedding.h"
#endif

namespace moex::ops {
namespace {

// Host ids checked there; on a CUDA table, a device copy of them. Ids already on the table's GPU
// were checked by the caller (one upload per step) and are used as they are.
Tensor checked_ids(const char* op, const Tensor& ids, int64_t vocab, const Device& dev) {
  MOEX_CHECK(ids.defined() && ids.dtype() == DType::kI32, op, ": ids must be an i32 tensor");
  if (dev.is_cuda() && ids.device() == dev) return ids;
  MOEX_CHECK(ids.device().is_cpu(), op, ": ids must be on the host or on the table's device");
  const int32_t* p = ids.data<int32_t>();
  for (int64_t i = 0; i < ids.numel(); ++i)
    MOEX_CHECK(p[i] >= 0 && p[i] < vocab, op, ": id ", p[i], " at position ", i,
               " is outside the table's ", vocab, " rows");
  return dev.is_cpu() ? ids : ids.to(dev);
}

// A lookup's sizes once table [rows, d] and y [n, d] are checked (compute dtype, dev).
struct LookupSizes {
  int64_t rows, d, n;
};
LookupSizes check_lookup(const char* op, const Device& dev, const Tensor& ids, const Tensor& table,
                         const Tensor& y) {
  const DType dt = detail::compute_dtype(dev);
  MOEX_CHECK(table.ndim() == 2, op, ": table must be [V, d], got ", table.shape().str());
  const int64_t rows = table.dim(0), d = table.dim(1), n = ids.numel();
  detail::expect(op, "table", table, dt, rows * d);
  detail::expect(op, "y", y, dt, n * d);
  return {rows, d, n};
}

}  // namespace

void embedding(const Tensor& ids, const Tensor& table, const Tensor& y, bool accumulate) {
  const Device dev = detail::common_device("embedding", {&table, &y});
  const ProfileScope profile("embedding", dev);
  const auto [vocab, d, n] = check_lookup("embedding", dev, ids, table, y);
  const Tensor dev_ids = checked_ids("embedding", ids, vocab, dev);
  if (dev.is_cpu()) {
    if (!accumulate) {
      cpu::embedding_forward<float>(ids.data<int32_t>(), table.data<float>(), n, vocab, d,
                                    y.data<float>());
      return;
    }
    const int32_t* id = ids.data<int32_t>();
    const float* t = table.data<float>();
    float* out = y.data<float>();
#pragma omp parallel for if (n * d >= cpu::kMinParallelWork)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < d; ++j) out[i * d + j] += t[id[i] * d + j];
    return;
  }
  MOEX_CUDA_TWIN("embedding",
                 cuda::embedding_forward_bf16(dev_ids.data<int32_t>(), table.raw_data(), n, vocab,
                                              d, y.raw_data(), accumulate, detail::stream(dev)));
}

void embedding_slice(const Tensor& ids, const Tensor& table, int64_t first_row, const Tensor& y) {
  const Device dev = detail::common_device("embedding_slice", {&table, &y});
  const ProfileScope profile("embedding_slice", dev);
  const auto [rows, d, n] = check_lookup("embedding_slice", dev, ids, table, y);
  MOEX_CHECK(ids.dtype() == DType::kI32 && (ids.device() == dev || ids.device().is_cpu()),
             "embedding_slice: ids must be i32 on the host or on the table's device");
  if (dev.is_cpu()) {
    cpu::embedding_slice_forward<float>(ids.data<int32_t>(), table.data<float>(), n, first_row,
                                        rows, d, y.data<float>());
    return;
  }
  const Tensor dev_ids = ids.device() == dev ? ids : ids.to(dev);
  MOEX_CUDA_TWIN("embedding_slice",
                 cuda::embedding_forward_bf16(dev_ids.data<int32_t>(), table.raw_data(), n, rows, d,
                                              y.raw_data(), false, detail::stream(dev), first_row));
}

void embedding_backward(const Tensor& ids, const Tensor& dy, const Tensor& dtable) {
  const Device dev = detail::common_device("embedding_backward", {&dy, &dtable});
  const ProfileScope profile("embedding_backward", dev);
  MOEX_CHECK(dtable.ndim() == 2, "embedding_backward: dtable must be [V, d]");
  const int64_t vocab = dtable.dim(0), d = dtable.dim(1), n = ids.numel();
  detail::expect("embedding_backward", "dy", dy, detail::compute_dtype(dev), n * d);
  const detail::GradOutput dt("embedding_backward", "dtable", dtable, vocab * d);
  const Tensor dev_ids = checked_ids("embedding_backward", ids, vocab, dev);
  if (dev.is_cpu()) {
    cpu::embedding_backward<float>(ids.data<int32_t>(), dy.data<float>(), n, vocab, d, dt.data());
    return;
  }
  MOEX_CUDA_TWIN("embedding_backward", {
    Tensor ws = Tensor::empty(
        Shape{static_cast<int64_t>(cuda::embedding_backward_workspace_bytes(n, vocab)) + 1},
        DType::kU8, dev);
    cuda::embedding_backward_bf16(dev_ids.data<int32_t>(), dy.raw_data(), n, vocab, d, dt.data(),
                                  ws.raw_data(), detail::stream(dev));
    dt.finish();
  });
}

}  // namespace moex::ops
