// y = x W^T (+ b) for a few rows of x (decoding's dense projections and LM head), with W streamed
// from memory once on tensor cores (cuda/few_rows_mma.cuh); docs/gpu-model.md §Decoding. At one to
// a few rows cuBLAS picks split-K kernels that leave a quarter of the bandwidth unused.
//
// Every output is summed in an order that does not depend on the number of rows, so a row gets the
// same bits alone as in a batch.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moex::cuda {

// The most rows of x one call takes (two passes of the 8-row MMA side).
constexpr int64_t kFewRowsLinearMaxRows = 16;

struct FewRowsLinearParams {
  const void* x = nullptr;     // [rows, k] bf16, rows k apart
  const void* w = nullptr;     // [n, k] bf16
  const void* bias = nullptr;  // [n] bf16 or nullptr (bf16 y only)
  void* y = nullptr;           // [rows, n] bf16, or fp32 when y_f32
  bool y_f32 = false;
  int64_t rows = 0, n = 0, k = 0;
};

// Whether few_rows_linear takes this call: 1..kFewRowsLinearMaxRows rows, k a multiple of 8 and
// x, w 16-byte aligned (its 16-byte loads).
bool few_rows_linear_fits(const FewRowsLinearParams& p);

// Whether few_rows_linear beats cuBLAS here: one row of a matrix small enough to be split along k
// (fewer 32-row units than half the resident blocks). On the H200 (docs/gpu-model.md §Decoding) it
// read one row's 4096 x 4096 output projection in 14.4-14.5 us against cuBLAS's 14.4-18.1 and the
// 6144 x 4096 QKV in 17.0-17.3 against 17.6-18.4; at 8 rows cuBLAS was 2-3 us faster, and at
// 32000 x 4096 (an LM head, unsplit) 6-10% faster.
bool few_rows_linear_wins(const FewRowsLinearParams& p);

// y = x W^T with fp32 accumulation; a bf16 y is rounded once, then the bias added (as
// gemm_bf16 followed by add_bias_bf16).
void few_rows_linear(const FewRowsLinearParams& p, cudaStream_t stream);

}  // namespace moex::cuda
