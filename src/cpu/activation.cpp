#include "cpu/activation.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"

namespace moex::cpu {
namespace {

// Below this many elements a parallel region costs more than it saves.
constexpr int64_t kParallelMin = 1 << 15;

template <typename T>
constexpr T kSqrt2OverPi = static_cast<T>(0.79788456080286535588);
template <typename T>
constexpr T kGeluCubic = static_cast<T>(0.044715);

// exp for the activations. float: a Cephes-style polynomial (relative error ~2e-7, inside the
// fp32 tolerance of docs/architecture.md §Numerics) built only from arithmetic and integer ops so
// that the loops vectorize; libm's expf/tanhf calls were a fifth of the MoE layer's time. double:
// libm (the gradient checks want full precision).
inline double fast_exp(double x) {
  return std::exp(x);
}
inline float fast_exp(float x) {
  x = std::min(88.3f, std::max(-87.3f, x));
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  const float n = (x * 1.44269504088896341f + magic) - magic;
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + fast_exp(-x));
}

void check_sizes(const void* a, const void* b, int64_t n, const char* op) {
  MOEX_CHECK(n >= 0, op, ": n must be >= 0, got ", n);
  MOEX_CHECK(n == 0 || (a && b), op, ": null pointer");
}

}  // namespace

template <typename T>
void gelu_forward(const T* x, T* y, int64_t n, bool exact) {
  check_sizes(x, y, n, "gelu_forward");
  if (exact) {
#pragma omp parallel for if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i)
      y[i] = T(0.5) * x[i] * (T(1) + std::erf(x[i] * static_cast<T>(M_SQRT1_2)));
  } else {
#pragma omp parallel for if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) {
      const T v = x[i];
      // 0.5 v (1 + tanh(u)) = v * sigmoid(2u)
      y[i] = v * sigmoid(T(2) * kSqrt2OverPi<T> * (v + kGeluCubic<T> * v * v * v));
    }
  }
}

template <typename T>
void gelu_backward(const T* x, const T* dy, T* dx, int64_t n, bool exact, T* y) {
  check_sizes(x, dx, n, "gelu_backward");
  MOEX_CHECK(n == 0 || dy, "gelu_backward: null dy");
  if (exact) {
    const T inv_sqrt_2pi = static_cast<T>(0.39894228040143267794);
#pragma omp parallel for if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) {
      const T v = x[i];
      const T e = std::erf(v * static_cast<T>(M_SQRT1_2));
      const T cdf = T(0.5) * (T(1) + e);
      dx[i] = dy[i] * (cdf + v * inv_sqrt_2pi * std::exp(T(-0.5) * v * v));
      if (y != nullptr) y[i] = T(0.5) * v * (T(1) + e);  // after dy[i] is read: y may be dy
    }
  } else {
#pragma omp parallel for if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) {
      const T v = x[i];
      const T sg = sigmoid(T(2) * kSqrt2OverPi<T> * (v + kGeluCubic<T> * v * v * v));
      const T th = T(2) * sg - T(1);  // tanh(u)
      const T dinner = kSqrt2OverPi<T> * (T(1) + T(3) * kGeluCubic<T> * v * v);
      dx[i] = dy[i] * (T(0.5) * (T(1) + th) + T(0.5) * v * (T(1) - th * th) * dinner);
      if (y != nullptr) y[i] = v * sg;  // after dy[i] is read: y may be dy
    }
  }
}

template <typename T>
void silu_forward(const T* x, T* y, int64_t n) {
  check_sizes(x, y, n, "silu_forward");
#pragma omp parallel for if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * sigmoid(x[i]);
}

template <typename T>
void silu_backward(const T* x, const T* dy, T* dx, int64_t n) {
  check_sizes(x, dx, n, "silu_backward");
  MOEX_CHECK(n == 0 || dy, "silu_backward: null dy");
#pragma omp parallel for if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const T s = sigmoid(x[i]);
    dx[i] = dy[i] * s * (T(1) + x[i] * (T(1) - s));
  }
}

template <typename T>
void swiglu_forward(const T* h, T* y, int64_t rows, int64_t ffn) {
  MOEX_CHECK(rows >= 0 && ffn >= 0, "swiglu_forward: rows and ffn must be >= 0, got ", rows, ", ",
             ffn);
  check_sizes(h, y, rows * ffn, "swiglu_forward");
#pragma omp parallel for if (rows * ffn >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    const T* gate = h + r * 2 * ffn;
    const T* up = gate + ffn;
    T* out = y + r * ffn;
    for (int64_t j = 0; j < ffn; ++j) out[j] = gate[j] * sigmoid(gate[j]) * up[j];
  }
}

template <typename T>
void swiglu_backward(const T* h, const T* dy, T* dh, int64_t rows, int64_t ffn, T* y) {
  MOEX_CHECK(rows >= 0 && ffn >= 0, "swiglu_backward: rows and ffn must be >= 0, got ", rows, ", ",
             ffn);
  check_sizes(h, dh, rows * ffn, "swiglu_backward");
  MOEX_CHECK(rows * ffn == 0 || dy, "swiglu_backward: null dy");
#pragma omp parallel for if (rows * ffn >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    const T* gate = h + r * 2 * ffn;
    const T* up = gate + ffn;
    const T* g = dy + r * ffn;
    T* dgate = dh + r * 2 * ffn;
    T* dup = dgate + ffn;
    T* out = y != nullptr ? y + r * ffn : nullptr;
    for (int64_t j = 0; j < ffn; ++j) {
      const T s = sigmoid(gate[j]);
      const T silu = gate[j] * s;
      const T gj = g[j];
      dup[j] = gj * silu;
      dgate[j] = gj * up[j] * s * (T(1) + gate[j] * (T(1) - s));
      if (out != nullptr) out[j] = silu * up[j];  // after g[j] is read: y may be dy
    }
  }
}

#define MOEX_INSTANTIATE_ACTIVATION(T)                                       \
  template void gelu_forward<T>(const T*, T*, int64_t, bool);                \
  template void gelu_backward<T>(const T*, const T*, T*, int64_t, bool, T*); \
  template void silu_forward<T>(const T*, T*, int64_t);                      \
  template void silu_backward<T>(const T*, const T*, T*, int64_t);           \
  template void swiglu_forward<T>(const T*, T*, int64_t, int64_t);           \
  template void swiglu_backward<T>(const T*, const T*, T*, int64_t, int64_t, T*);
MOEX_INSTANTIATE_ACTIVATION(float)
MOEX_INSTANTIATE_ACTIVATION(double)
#undef MOEX_INSTANTIATE_ACTIVATION

}  // namespace moex::cpu
