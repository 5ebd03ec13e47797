// Row softmax and log-softmax over the last dimension of x [num_rows, num_cols], max-subtracted so
// that large logits do not overflow.
#pragma once

#include <cstdint>

namespace moex::cpu {

// y may alias x.
template <typename T>
void softmax_forward(const T* x,  // [num_rows, num_cols]
                     int64_t num_rows, int64_t num_cols,
                     T* y);  // [num_rows, num_cols]

// dx = y * (dy - sum(dy * y)) per row, from the saved output y; dx may alias dy.
template <typename T>
void softmax_backward(const T* y,   // [num_rows, num_cols], forward output
                      const T* dy,  // [num_rows, num_cols]
                      int64_t num_rows, int64_t num_cols,
                      T* dx);  // [num_rows, num_cols]

// y = x - logsumexp(x) per row; y may alias x.
template <typename T>
void log_softmax_forward(const T* x,  // [num_rows, num_cols]
                         int64_t num_rows, int64_t num_cols,
                         T* y);  // [num_rows, num_cols]

// dx = dy - exp(y) * sum(dy) per row, from the saved output y; dx may alias dy.
template <typename T>
void log_softmax_backward(const T* y,   // [num_rows, num_cols], forward output
                          const T* dy,  // [num_rows, num_cols]
                          int64_t num_rows, int64_t num_cols,
                          T* dx);  // [num_rows, num_cols]

// One row in place (used inside other kernels, e.g. attention): x[0..n) <- softmax(x[0..n)).
template <typename T>
void softmax_row_inplace(T* x, int64_t n);

}  // namespace moex::cpu
