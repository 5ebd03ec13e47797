#include "cpu/norm.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "cpu/parallel.h"

namespace moex::cpu {
namespace {

void check_norm_sizes(const char* op, int64_t num_rows, int64_t dim) {
  MOEX_CHECK(num_rows >= 0, op, ": num_rows must be >= 0, got ", num_rows);
  MOEX_CHECK(dim > 0, op, ": dim must be > 0, got ", dim);
}

}  // namespace

template <typename T>
void layernorm_forward(const T* x, const T* weight, const T* bias, int64_t num_rows, int64_t dim,
                       T eps, T* y, T* mean, T* rstd) {
  check_norm_sizes("layernorm_forward", num_rows, dim);
  MOEX_CHECK(eps >= 0, "layernorm_forward: eps must be >= 0, got ", eps);
  MOEX_CHECK(weight != nullptr, "layernorm_forward: weight is null");
  if (num_rows == 0) return;
  MOEX_CHECK(x && y, "layernorm_forward: x or y is null");
  MOEX_CHECK(mean && rstd, "layernorm_forward: mean or rstd (saved statistics) is null");
#pragma omp parallel for schedule(static) if (num_rows * dim >= kMinParallelWork)
  for (int64_t r = 0; r < num_rows; ++r) {
    const T* xr = x + r * dim;
    T* yr = y + r * dim;
    // Two passes (mean, then centered squares): stable where E[x^2] - E[x]^2 is not.
    T sum = 0;
    for (int64_t c = 0; c < dim; ++c) sum += xr[c];
    const T mu = sum / static_cast<T>(dim);
    T sq = 0;
    for (int64_t c = 0; c < dim; ++c) sq += (xr[c] - mu) * (xr[c] - mu);
    const T rs = T(1) / std::sqrt(sq / static_cast<T>(dim) + eps);
    mean[r] = mu;
    rstd[r] = rs;
    if (bias) {
      for (int64_t c = 0; c < dim; ++c) yr[c] = (xr[c] - mu) * rs * weight[c] + bias[c];
    } else {
      for (int64_t c = 0; c < dim; ++c) yr[c] = (xr[c] - mu) * rs * weight[c];
    }
  }
}

template <typename T>
void layernorm_backward(const T* dy, const T* x, const T* weight, const T* mean, const T* rstd,
                        int64_t num_rows, int64_t dim, T* dx, T* dweight, T* dbias) {
  check_norm_sizes("layernorm_backward", num_rows, dim);
  MOEX_CHECK(weight != nullptr, "layernorm_backward: weight is null");
  MOEX_CHECK(dweight != nullptr, "layernorm_backward: dweight is null");
  if (num_rows == 0) return;
  MOEX_CHECK(dy && x && dx, "layernorm_backward: dy, x or dx is null");
  MOEX_CHECK(mean && rstd, "layernorm_backward: mean or rstd is null");
  // Parameter gradients first: dx may alias dy.
  for_column_blocks(dim, num_rows * dim, [&](int64_t c0, int64_t c1) {
    for (int64_t r = 0; r < num_rows; ++r) {
      const T* xr = x + r * dim;
      const T* dyr = dy + r * dim;
      for (int64_t c = c0; c < c1; ++c) dweight[c] += dyr[c] * (xr[c] - mean[r]) * rstd[r];
      if (dbias) {
        for (int64_t c = c0; c < c1; ++c) dbias[c] += dyr[c];
      }
    }
  });
  // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * weight.
#pragma omp parallel for schedule(static) if (num_rows * dim >= kMinParallelWork)
  for (int64_t r = 0; r < num_rows; ++r) {
    const T* xr = x + r * dim;
    const T* dyr = dy + r * dim;
    T* dxr = dx + r * dim;
    const T mu = mean[r], rs = rstd[r];
    T sum_g = 0, sum_gx = 0;
    for (int64_t c = 0; c < dim; ++c) {
      const T g = dyr[c] * weight[c];
      sum_g += g;
      sum_gx += g * (xr[c] - mu) * rs;
    }
    const T mean_g = sum_g / static_cast<T>(dim), mean_gx = sum_gx / static_cast<T>(dim);
    for (int64_t c = 0; c < dim; ++c) {
      const T xhat = (xr[c] - mu) * rs;
      dxr[c] = rs * (dyr[c] * weight[c] - mean_g - xhat * mean_gx);
    }
  }
}

template <typename T>
void rmsnorm_forward(const T* x, const T* weight, int64_t num_rows, int64_t dim, T eps, T* y,
                     T* rstd) {
  check_norm_sizes("rmsnorm_forward", num_rows, dim);
  MOEX_CHECK(eps >= 0, "rmsnorm_forward: eps must be >= 0, got ", eps);
  MOEX_CHECK(weight != nullptr, "rmsnorm_forward: weight is null");
  if (num_rows == 0) return;
  MOEX_CHECK(x && y, "rmsnorm_forward: x or y is null");
  MOEX_CHECK(rstd != nullptr, "rmsnorm_forward: rstd (saved statistic) is null");
#pragma omp parallel for schedule(static) if (num_rows * dim >= kMinParallelWork)
  for (int64_t r = 0; r < num_rows; ++r) {
    const T* xr = x + r * dim;
    T* yr = y + r * dim;
    T sq = 0;
    for (int64_t c = 0; c < dim; ++c) sq += xr[c] * xr[c];
    const T rs = T(1) / std::sqrt(sq / static_cast<T>(dim) + eps);
    rstd[r] = rs;
    for (int64_t c = 0; c < dim; ++c) yr[c] = xr[c] * rs * weight[c];
  }
}

template <typename T>
void rmsnorm_backward(const T* dy, const T* x, const T* weight, const T* rstd, int64_t num_rows,
                      int64_t dim, T* dx, T* dweight) {
  check_norm_sizes("rmsnorm_backward", num_rows, dim);
  MOEX_CHECK(weight != nullptr, "rmsnorm_backward: weight is null");
  MOEX_CHECK(dweight != nullptr, "rmsnorm_backward: dweight is null");
  if (num_rows == 0) return;
  MOEX_CHECK(dy && x && dx, "rmsnorm_backward: dy, x or dx is null");
  MOEX_CHECK(rstd != nullptr, "rmsnorm_backward: rstd is null");
  for_column_blocks(dim, num_rows * dim, [&](int64_t c0, int64_t c1) {
    for (int64_t r = 0; r < num_rows; ++r) {
      const T* xr = x + r * dim;
      const T* dyr = dy + r * dim;
      for (int64_t c = c0; c < c1; ++c) dweight[c] += dyr[c] * xr[c] * rstd[r];
    }
  });
  // dx = rstd * (g - xhat * mean(g * xhat)), g = dy * weight, xhat = x * rstd.
#pragma omp parallel for schedule(static) if (num_rows * dim >= kMinParallelWork)
  for (int64_t r = 0; r < num_rows; ++r) {
    const T* xr = x + r * dim;
    const T* dyr = dy + r * dim;
    T* dxr = dx + r * dim;
    const T rs = rstd[r];
    T sum_gx = 0;
    for (int64_t c = 0; c < dim; ++c) sum_gx += dyr[c] * weight[c] * xr[c] * rs;
    const T mean_gx = sum_gx / static_cast<T>(dim);
    for (int64_t c = 0; c < dim; ++c) dxr[c] = rs * (dyr[c] * weight[c] - xr[c] * rs * mean_gx);
  }
}

#define MOEX_INSTANTIATE_NORM(T)                                                                  \
  template void layernorm_forward<T>(const T*, const T*, const T*, int64_t, int64_t, T, T*, T*,   \
                                     T*);                                                         \
  template void layernorm_backward<T>(const T*, const T*, const T*, const T*, const T*, int64_t,  \
                                      int64_t, T*, T*, T*);                                       \
  template void rmsnorm_forward<T>(const T*, const T*, int64_t, int64_t, T, T*, T*);              \
  template void rmsnorm_backward<T>(const T*, const T*, const T*, const T*, int64_t, int64_t, T*, \
                                    T*);
MOEX_INSTANTIATE_NORM(float)
MOEX_INSTANTIATE_NORM(double)
#undef MOEX_INSTANTIATE_NORM

}  // namespace moex::cpu
