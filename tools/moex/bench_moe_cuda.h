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
  // Not measured under expert parallelism.
  bool has_host_sync = false;
  double host_sync_ms = 0, host_wait_ms = 0, fwd_known_counts_ms = 0;
  // options.ep > 1: the exchanges (the TFLOP/s then count this rank's routed tokens, which the
  // owners compute; no dense comparison).
  MoEExchangeReport exchange;
};

// mode: "capacity", "dropless" (= dropless-padded) or "dropless-grouped"; medians of
// options.iters (>= 1) timed runs after options.warmup (>= 0); options.ep > 1 under mpirun spreads
// the experts over the ranks (one GPU each, or MOEX_GPU_COLLECTIVES=host); options.recompute and
// options.cac as on the CPU. Throws without CUDA.
MoECudaBenchResult run_moe_bench_cuda(const MoEBenchShape& shape, const std::string& mode,
                                      const MoEBenchOptions& options);
// {"shape","mode","fwd_ms","fwdbwd_ms","fwd_tflops","fwdbwd_tflops"}, then "dense_fwdbwd_tflops",
// or under ep the exchange keys of moe_exchange_json, and "host_sync_ms", "host_wait_ms",
// "fwd_known_counts_ms" on dropless lines.
std::string moe_cuda_bench_json(const MoECudaBenchResult& r);
// The same numbers as one line of text.
std::string moe_cuda_bench_text(const MoECudaBenchResult& r);

}  // namespace moex::bench
