#include "model/linear.h"

#include "cpu/gemm.h"

namespace moex::model {

void linear_forward(const float* x, const float* w, const float* b, int64_t n, int64_t in,
                    int64_t out, float* y) {
  cpu::gemm<float>(false, true, n, out, in, 1.0f, x, w, 0.0f, y);
  if (b == nullptr) return;
#pragma omp parallel for
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < out; ++j) y[i * out + j] += b[j];
}

void linear_backward(const float* dy, const float* x, const float* w, int64_t n, int64_t in,
                     int64_t out, float* dx, bool accumulate_dx, float* dw, float* db) {
  if (dx != nullptr)
    cpu::gemm<float>(false, false, n, in, out, 1.0f, dy, w, accumulate_dx ? 1.0f : 0.0f, dx);
  cpu::gemm<float>(true, false, out, in, n, 1.0f, dy, x, 1.0f, dw);
  if (db == nullptr) return;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < out; ++j) db[j] += dy[i * out + j];
}

}  // namespace moex::model
