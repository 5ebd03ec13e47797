#include "cpu/rope.h"

#include <cmath>
#include <vector>

#include "core/error.h"
#include "cpu/parallel.h"

namespace moex::cpu {
namespace {

void check_rope(const char* op, const void* in, const void* out, const RopeShape& s) {
  MOEX_CHECK(s.batch >= 0, op, ": batch must be >= 0, got ", s.batch);
  MOEX_CHECK(s.seq_len >= 0, op, ": seq_len must be >= 0, got ", s.seq_len);
  MOEX_CHECK(s.num_heads > 0, op, ": num_heads must be > 0, got ", s.num_heads);
  MOEX_CHECK(s.head_dim > 0 && s.head_dim % 2 == 0, op, ": head_dim must be even and > 0, got ",
             s.head_dim);
  MOEX_CHECK(s.start_pos >= 0, op, ": start_pos must be >= 0, got ", s.start_pos);
  MOEX_CHECK(s.theta > 0, op, ": theta must be > 0, got ", s.theta);
  MOEX_CHECK(s.positions == nullptr || s.batch == 1, op,
             ": a position per token needs batch 1, got ", s.batch);
  if (s.batch * s.seq_len == 0) return;
  MOEX_CHECK(in != nullptr && out != nullptr, op, ": input or output pointer is null");
}

// sign = +1 rotates forward, -1 rotates back (backward pass).
template <typename T>
void rope_apply(const T* x, const RopeShape& s, T sign, T* y) {
  const int64_t half = s.head_dim / 2;
  std::vector<T> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) {
    inv_freq[i] = T(1) / std::pow(static_cast<T>(s.theta),
                                  static_cast<T>(2 * i) / static_cast<T>(s.head_dim));
  }
  const int64_t row = s.num_heads * s.head_dim;
#pragma omp parallel if (s.batch * s.seq_len * row >= kMinParallelWork)
  {
    std::vector<T> cos_t(half), sin_t(half);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < s.seq_len; ++t) {
      const T pos = static_cast<T>(s.positions != nullptr ? s.positions[t] : s.start_pos + t);
      for (int64_t i = 0; i < half; ++i) {
        const T angle = pos * inv_freq[i];
        cos_t[i] = std::cos(angle);
        sin_t[i] = sign * std::sin(angle);
      }
      for (int64_t b = 0; b < s.batch; ++b) {
        for (int64_t h = 0; h < s.num_heads; ++h) {
          const int64_t off = (b * s.seq_len + t) * row + h * s.head_dim;
          const T* xh = x + off;
          T* yh = y + off;
          for (int64_t i = 0; i < half; ++i) {
            const T x1 = xh[i], x2 = xh[i + half];
            yh[i] = x1 * cos_t[i] - x2 * sin_t[i];
            yh[i + half] = x2 * cos_t[i] + x1 * sin_t[i];
          }
        }
      }
    }
  }
}

}  // namespace

template <typename T>
void rope_forward(const T* x, const RopeShape& shape, T* y) {
  check_rope("rope_forward", x, y, shape);
  rope_apply(x, shape, T(1), y);
}

template <typename T>
void rope_backward(const T* dy, const RopeShape& shape, T* dx) {
  check_rope("rope_backward", dy, dx, shape);
  rope_apply(dy, shape, T(-1), dx);
}

template void rope_forward<float>(const float*, const RopeShape&, float*);
template void rope_forward<double>(const double*, const RopeShape&, double*);
template void rope_backward<float>(const float*, const RopeShape&, float*);
template void rope_backward<double>(const double*, const RopeShape&, double*);

}  // namespace moex::cpu
