// `moex bench moe-layer --device cuda`: the GPU layer (src/cuda/moe_layer_cuda.h) timed with CUDA
// events, forward and forward+backward, against a dense FFN with the same FLOPs in the same
// process.
#pragma once

#include <string>

#include "bench_moe.h"

namespace moex::bench {

struct MoECudaBenchResult {
  std::string shape, mode;
  double fwd_ms = 0, fwdbwd_ms = 0, fwd_tflops = 0, fwdbwd_tflops = 0, dense_fwdbwd_tflops = 0;
  double dense_fwdbwd_ms = 0, gating_ms = 0;
  // Dropless modes only (has_host_sync): the cost of the counts copy + stream sync inside the
  // forward. host_sync_ms = median dropless fwd - median of the same forward with the counts known
  // in advance (MoELayerCuda::reuse_dropless_counts; same x and seed, so the same routing);
  // host_wait_ms = mean wall time the host sat blocked in that sync per forward (it includes the
  // router and gating GPU work queued before it, so it bounds the bubble from above).
  bool has_host_sync = false;
  double host_sync_ms = 0, host_wait_ms = 0, fwd_known_counts_ms = 0;
};

// mode: "capacity", "dropless" (grouped cuBLAS GEMM) or "dropless-padded"; medians of `iters`
// (>= 1) timed runs after `warmup` (>= 0). Throws without CUDA.
MoECudaBenchResult run_moe_bench_cuda(const MoEBenchShape& shape, const std::string& mode,
                                      int warmup, int iters);
// {"shape","mode","fwd_ms","fwdbwd_ms","fwd_tflops","fwdbwd_tflops","dense_fwdbwd_tflops"}, plus
// "host_sync_ms", "host_wait_ms", "fwd_known_counts_ms" on dropless lines.
std::string moe_cuda_bench_json(const MoECudaBenchResult& r);
// The same numbers as one line of text.
std::string moe_cuda_bench_text(const MoECudaBenchResult& r);

}  // namespace moex::bench
