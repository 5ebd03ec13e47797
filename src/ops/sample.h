// The next token of each row on the device: greedy (temperature 0) or temperature / top-k / top-p
// sampling with the counter RNG, one op for mixed batches, drawing what the host sampler
// (infer::sample_token) draws. A serving step uploads the rows' parameters with its indices, so
// sampling runs inside the step's CUDA graph and only [S] ids come back (docs/gpu-model.md
// §Decoding).
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace moex::ops {

// One row's parameters (infer::SamplingParams plus the RNG counter); temperature 0 is greedy.
struct SampleParams {
  double temperature = 0.0;
  double top_p = 1.0;
  int64_t top_k = 0;  // 0: no limit
  uint64_t seed = 0;
  uint64_t draw = 0;  // the index of this draw in the sequence
};
// A params tensor is [S, kSampleParamWords] i32: row s holds the bytes of row s's SampleParams, so
// it travels in an i32 upload (the words need not be 8-byte aligned).
constexpr int64_t kSampleParamWords = static_cast<int64_t>(sizeof(SampleParams) / sizeof(int32_t));
void write_sample_params(const SampleParams& p, int32_t* words);

// out[s] = the token of logits x[s, :] under params[s]: x [S, V] f32, params [S,
// kSampleParamWords] i32, out [S] i32, on one device. On the CPU, a bad parameter is an error
// naming it; the device reads them as they are (check them where they come in). On CUDA,
// workspace is sample_rows_workspace_bytes(S) u8 on the device (from a step's arena, so a captured
// step allocates nothing), and at most 65535 rows a call; the CPU needs none.
void sample_rows(const Tensor& x, const Tensor& params, const Tensor& out,
                 const Tensor& workspace = Tensor());
int64_t sample_rows_workspace_bytes(int64_t rows);

}  // namespace moex::ops
