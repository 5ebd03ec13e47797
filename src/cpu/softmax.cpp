#include "cpu/softmax.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "cpu/parallel.h"
#include "cpu/vec_math.h"

namespace moex::cpu {
namespace {

template <typename T>
void check_softmax(const char* op, const T* a, const T* b, const T* out, int64_t num_rows,
                   int64_t num_cols) {
  MOEX_CHECK(num_rows >= 0, op, ": num_rows must be >= 0, got ", num_rows);
  MOEX_CHECK(num_cols > 0, op, ": num_cols must be > 0, got ", num_cols);
  if (num_rows == 0) return;
  MOEX_CHECK(a != nullptr && b != nullptr && out != nullptr, op,
             ": an input or output pointer is null");
}

}  // namespace

template <typename T>
void softmax_row_inplace(T* x, int64_t n) {
  T mx = x[0];
  for (int64_t c = 1; c < n; ++c) mx = std::max(mx, x[c]);
  const T sum = exp_shifted_sum(x, mx, n, x);
  const T inv = T(1) / sum;
  for (int64_t c = 0; c < n; ++c) x[c] *= inv;
}

template <typename T>
void softmax_forward(const T* x, int64_t num_rows, int64_t num_cols, T* y) {
  check_softmax("softmax_forward", x, x, y, num_rows, num_cols);
#pragma omp parallel for schedule(static) if (num_rows * num_cols >= kMinParallelWork)
  for (int64_t r = 0; r < num_rows; ++r) {
    if (y != x) std::copy(x + r * num_cols, x + (r + 1) * num_cols, y + r * num_cols);
    softmax_row_inplace(y + r * num_cols, num_cols);
  }
}

template <typename T>
void softmax_backward(const T* y, const T* dy, int64_t num_rows, int64_t num_cols, T* dx) {
  check_softmax("softmax_backward", y, dy, dx, num_rows, num_cols);
#pragma omp parallel for schedule(static) if (num_rows * num_cols >= kMinParallelWork)
  for (int64_t r = 0; r < num_rows; ++r) {
    const T* yr = y + r * num_cols;
    const T* dyr = dy + r * num_cols;
    T* dxr = dx + r * num_cols;
    T dot = 0;
    for (int64_t c = 0; c < num_cols; ++c) dot += yr[c] * dyr[c];
    for (int64_t c = 0; c < num_cols; ++c) dxr[c] = yr[c] * (dyr[c] - dot);
  }
}

template <typename T>
void log_softmax_forward(const T* x, int64_t num_rows, int64_t num_cols, T* y) {
  check_softmax("log_softmax_forward", x, x, y, num_rows, num_cols);
#pragma omp parallel for schedule(static) if (num_rows * num_cols >= kMinParallelWork)
  for (int64_t r = 0; r < num_rows; ++r) {
    const T* xr = x + r * num_cols;
    T* yr = y + r * num_cols;
    T mx = xr[0];
    for (int64_t c = 1; c < num_cols; ++c) mx = std::max(mx, xr[c]);
    const T sum = exp_shifted_sum(xr, mx, num_cols, static_cast<T*>(nullptr));
    const T lse = mx + std::log(sum);
    for (int64_t c = 0; c < num_cols; ++c) yr[c] = xr[c] - lse;
  }
}

template <typename T>
void log_softmax_backward(const T* y, const T* dy, int64_t num_rows, int64_t num_cols, T* dx) {
  check_softmax("log_softmax_backward", y, dy, dx, num_rows, num_cols);
#pragma omp parallel for schedule(static) if (num_rows * num_cols >= kMinParallelWork)
  for (int64_t r = 0; r < num_rows; ++r) {
    const T* yr = y + r * num_cols;
    const T* dyr = dy + r * num_cols;
    T* dxr = dx + r * num_cols;
    T sum = 0;
    for (int64_t c = 0; c < num_cols; ++c) sum += dyr[c];
    for (int64_t c = 0; c < num_cols; ++c) dxr[c] = dyr[c] - std::exp(yr[c]) * sum;
  }
}

#define MOEX_INSTANTIATE_SOFTMAX(T)                                            \
  template void softmax_row_inplace<T>(T*, int64_t);                           \
  template void softmax_forward<T>(const T*, int64_t, int64_t, T*);            \
  template void softmax_backward<T>(const T*, const T*, int64_t, int64_t, T*); \
  template void log_softmax_forward<T>(const T*, int64_t, int64_t, T*);        \
  template void log_softmax_backward<T>(const T*, const T*, int64_t, int64_t, T*);
MOEX_INSTANTIATE_SOFTMAX(float)
MOEX_INSTANTIATE_SOFTMAX(double)
#undef MOEX_INSTANTIATE_SOFTMAX

}  // namespace moex::cpu
