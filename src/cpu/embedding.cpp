#include "cpu/embedding.h"

#include <algorithm>

#include "core/error.h"
#include "cpu/parallel.h"

namespace moex::cpu {
namespace {

template <typename T>
void check_embedding(const int32_t* ids, const void* rows, const void* table, int64_t num_tokens,
                     int64_t vocab_size, int64_t dim) {
  MOEX_CHECK(num_tokens >= 0, "embedding: num_tokens must be >= 0, got ", num_tokens);
  MOEX_CHECK(vocab_size > 0, "embedding: vocab_size must be > 0, got ", vocab_size);
  MOEX_CHECK(dim > 0, "embedding: dim must be > 0, got ", dim);
  if (num_tokens == 0) return;
  MOEX_CHECK(ids != nullptr, "embedding: ids is null");
  MOEX_CHECK(rows != nullptr && table != nullptr,
             "embedding: weight/out (or dout/dweight) is null");
  for (int64_t i = 0; i < num_tokens; ++i) {
    MOEX_CHECK(ids[i] >= 0 && ids[i] < vocab_size, "embedding: ids[", i, "] = ", ids[i],
               " is outside the vocabulary [0, ", vocab_size, ")");
  }
}

}  // namespace

template <typename T>
void embedding_forward(const int32_t* ids, const T* weight, int64_t num_tokens, int64_t vocab_size,
                       int64_t dim, T* out) {
  check_embedding<T>(ids, out, weight, num_tokens, vocab_size, dim);
#pragma omp parallel for schedule(static) if (num_tokens * dim >= kMinParallelWork)
  for (int64_t i = 0; i < num_tokens; ++i) {
    std::copy(weight + ids[i] * dim, weight + (ids[i] + 1) * dim, out + i * dim);
  }
}

template <typename T>
void embedding_slice_forward(const int32_t* ids, const T* weight, int64_t num_tokens,
                             int64_t first_row, int64_t rows, int64_t dim, T* out) {
  MOEX_CHECK(num_tokens >= 0 && first_row >= 0 && rows > 0 && dim > 0,
             "embedding_slice_forward: bad sizes (tokens ", num_tokens, ", rows ", first_row, "+",
             rows, ", dim ", dim, ")");
#pragma omp parallel for schedule(static) if (num_tokens * dim >= kMinParallelWork)
  for (int64_t i = 0; i < num_tokens; ++i) {
    const int64_t row = ids[i] - first_row;
    if (row >= 0 && row < rows)
      std::copy(weight + row * dim, weight + (row + 1) * dim, out + i * dim);
    else
      std::fill(out + i * dim, out + (i + 1) * dim, T(0));
  }
}

template <typename T>
void embedding_backward(const int32_t* ids, const T* dout, int64_t num_tokens, int64_t vocab_size,
                        int64_t dim, T* dweight) {
  check_embedding<T>(ids, dout, dweight, num_tokens, vocab_size, dim);
  // Threads split the columns, not the tokens: a repeated id then never races.
  for_column_blocks(dim, num_tokens * dim, [&](int64_t c0, int64_t c1) {
    for (int64_t i = 0; i < num_tokens; ++i) {
      const T* src = dout + i * dim;
      T* dst = dweight + ids[i] * dim;
      for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
    }
  });
}

template void embedding_forward<float>(const int32_t*, const float*, int64_t, int64_t, int64_t,
                                       float*);
template void embedding_forward<double>(const int32_t*, const double*, int64_t, int64_t, int64_t,
                                        double*);
template void embedding_slice_forward<float>(const int32_t*, const float*, int64_t, int64_t,
                                             int64_t, int64_t, float*);
template void embedding_backward<float>(const int32_t*, const float*, int64_t, int64_t, int64_t,
                                        float*);
template void embedding_backward<double>(const int32_t*, const double*, int64_t, int64_t, int64_t,
                                         double*);

}  // namespace moex::cpu
