#include "cpu/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "cpu/parallel.h"
#include "cpu/vec_math.h"

namespace moex::cpu {

template <typename T>
T cross_entropy_forward_backward(const T* logits, const int32_t* targets, int64_t num_rows,
                                 int64_t vocab_size, int32_t ignore_index, T dloss, T* dlogits) {
  MOEX_CHECK(num_rows >= 0, "cross_entropy: num_rows must be >= 0, got ", num_rows);
  MOEX_CHECK(vocab_size > 0, "cross_entropy: vocab_size must be > 0, got ", vocab_size);
  if (num_rows == 0) return T(0);
  MOEX_CHECK(logits != nullptr, "cross_entropy: logits is null");
  MOEX_CHECK(targets != nullptr, "cross_entropy: targets is null");
  int64_t count = 0;
  for (int64_t i = 0; i < num_rows; ++i) {
    if (targets[i] == ignore_index) continue;
    MOEX_CHECK(targets[i] >= 0 && targets[i] < vocab_size, "cross_entropy: targets[", i,
               "] = ", targets[i], " is outside [0, ", vocab_size, ") and is not ignore_index (",
               ignore_index, ")");
    ++count;
  }
  if (count == 0) {
    if (dlogits) std::fill(dlogits, dlogits + num_rows * vocab_size, T(0));
    return T(0);
  }
  const T grad_scale = dloss / static_cast<T>(count);
  // Per-row losses go to a buffer and are summed in row order afterwards, so the loss is the
  // same bit for bit whatever the thread count (an OpenMP reduction would not be).
  std::vector<double> row_loss(num_rows, 0.0);
#pragma omp parallel for schedule(static) if (num_rows * vocab_size >= kMinParallelWork)
  for (int64_t i = 0; i < num_rows; ++i) {
    const T* row = logits + i * vocab_size;
    T* drow = dlogits ? dlogits + i * vocab_size : nullptr;
    if (targets[i] == ignore_index) {
      if (drow) std::fill(drow, drow + vocab_size, T(0));
      continue;
    }
    T mx = row[0];
    for (int64_t c = 1; c < vocab_size; ++c) mx = std::max(mx, row[c]);
    const T sum = exp_shifted_sum(row, mx, vocab_size, static_cast<T*>(nullptr));
    const T lse = mx + std::log(sum);
    row_loss[i] = static_cast<double>(lse - row[targets[i]]);
    if (drow) {
      exp_shifted_sum(row, lse, vocab_size, drow);  // softmax; drow may alias row
      for (int64_t c = 0; c < vocab_size; ++c) drow[c] *= grad_scale;
      drow[targets[i]] -= grad_scale;
    }
  }
  double total = 0;
  for (int64_t i = 0; i < num_rows; ++i) total += row_loss[i];
  return static_cast<T>(total / static_cast<double>(count));
}

template float cross_entropy_forward_backward<float>(const float*, const int32_t*, int64_t, int64_t,
                                                     int32_t, float, float*);
template double cross_entropy_forward_backward<double>(const double*, const int32_t*, int64_t,
                                                       int64_t, int32_t, double, double*);

void cross_entropy_partial_stats(const float* logits, const int32_t* targets, int64_t num_rows,
                                 int64_t vocab_size, int64_t vocab_begin, int32_t ignore_index,
                                 float* stats) {
#pragma omp parallel for schedule(static) if (num_rows * vocab_size >= kMinParallelWork)
  for (int64_t i = 0; i < num_rows; ++i) {
    const float* row = logits + i * vocab_size;
    float* out = stats + 3 * i;
    out[0] = out[1] = out[2] = 0.0f;
    if (targets[i] == ignore_index) continue;
    float mx = row[0];
    for (int64_t c = 1; c < vocab_size; ++c) mx = std::max(mx, row[c]);
    out[0] = mx;
    out[1] = exp_shifted_sum(row, mx, vocab_size, static_cast<float*>(nullptr));
    const int64_t local = targets[i] - vocab_begin;
    if (local >= 0 && local < vocab_size) out[2] = row[local];
  }
}

void cross_entropy_partial_grad(const float* logits, const int32_t* targets, const float* lse,
                                int64_t num_rows, int64_t vocab_size, int64_t vocab_begin,
                                int32_t ignore_index, float scale, float* dlogits) {
#pragma omp parallel for schedule(static) if (num_rows * vocab_size >= kMinParallelWork)
  for (int64_t i = 0; i < num_rows; ++i) {
    float* drow = dlogits + i * vocab_size;
    if (targets[i] == ignore_index) {
      std::fill(drow, drow + vocab_size, 0.0f);
      continue;
    }
    exp_shifted_sum(logits + i * vocab_size, lse[i], vocab_size, drow);  // softmax's columns
    for (int64_t c = 0; c < vocab_size; ++c) drow[c] *= scale;
    const int64_t local = targets[i] - vocab_begin;
    if (local >= 0 && local < vocab_size) drow[local] -= scale;
  }
}

}  // namespace moex::cpu
