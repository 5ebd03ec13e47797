#include "ops/sample.h"

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "core/sampling_math.h"
#include "cpu/sample.h"
#include "ops/device_dispatch.h"
#include "ops/profile.h"

#if MOEX_WITH_CUDA
#include "cuda/sample.h"
#endif

namespace moex::ops {

// The word layout both twins read (cpu/sample.h, cuda/sample.h).
static_assert(kSampleParamWords == 10 && offsetof(SampleParams, temperature) == 0 &&
                  offsetof(SampleParams, top_p) == 8 && offsetof(SampleParams, top_k) == 16 &&
                  offsetof(SampleParams, seed) == 24 && offsetof(SampleParams, draw) == 32,
              "SampleParams: f64 temperature, f64 top_p, i64 top_k, u64 seed, u64 draw");

void write_sample_params(const SampleParams& p, int32_t* words) {
  std::memcpy(words, &p, sizeof(p));
}

int64_t sample_rows_workspace_bytes(int64_t rows) {
#if MOEX_WITH_CUDA
  return static_cast<int64_t>(cuda::sample_rows_workspace_bytes(rows));
#else
  (void)rows;
  return 0;
#endif
}

void sample_rows(const Tensor& x, const Tensor& params, const Tensor& out,
                 const Tensor& workspace) {
  const Device dev = detail::common_device("sample_rows", {&x, &params, &out});
  const ProfileScope profile("sample_rows", dev);
  MOEX_CHECK(x.ndim() == 2 && x.dim(1) > 0, "sample_rows: x must be [S, V] with V > 0, got ",
             x.shape().str());
  const int64_t rows = x.dim(0), cols = x.dim(1);
  MOEX_CHECK(cols <= kMaxSampledVocab, "sample_rows: a vocabulary of ", cols,
             " is over the sampler's limit of ", kMaxSampledVocab, " tokens");
  detail::expect("sample_rows", "x", x, DType::kF32, rows * cols);
  detail::expect("sample_rows", "params", params, DType::kI32, rows * kSampleParamWords);
  detail::expect("sample_rows", "out", out, DType::kI32, rows);
  if (dev.is_cpu()) {
    const int32_t* words = params.data<int32_t>();
    for (int64_t s = 0; s < rows; ++s) {
      SampleParams p;
      std::memcpy(static_cast<void*>(&p), words + s * kSampleParamWords, sizeof(p));
      MOEX_CHECK(p.temperature >= 0, "sample_rows: row ", s, ": temperature must be >= 0 (got ",
                 p.temperature, ")");
      MOEX_CHECK(p.top_p > 0 && p.top_p <= 1, "sample_rows: row ", s,
                 ": top_p must be in (0, 1] (got ", p.top_p, ")");
      MOEX_CHECK(p.top_k >= 0, "sample_rows: row ", s, ": top_k must be >= 0 (got ", p.top_k, ")");
    }
    cpu::sample_rows(x.data<float>(), rows, cols, words, out.data<int32_t>());
    return;
  }
  MOEX_CUDA_TWIN("sample_rows", {
    const int64_t bytes = sample_rows_workspace_bytes(rows);
    MOEX_CHECK(workspace.defined() && workspace.device() == dev &&
                   workspace.nbytes() >= static_cast<size_t>(bytes),
               "sample_rows: the workspace must hold ", bytes, " bytes on ", dev.str());
    cuda::sample_rows_f32(x.data<float>(), rows, cols, params.data<int32_t>(),
                          workspace.raw_data(), out.data<int32_t>(), detail::stream(dev));
  });
}

}  // namespace moex::ops
