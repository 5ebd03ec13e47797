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
};

// mode: "capacity", "dropless" (grouped cuBLAS GEMM) or "dropless-padded". Throws without CUDA.
MoECudaBenchResult run_moe_bench_cuda(const MoEBenchShape& shape, const std::string& mode,
                                      int warmup, int iters);
// {"shape","mode","fwd_ms","fwdbwd_ms","fwd_tflops","fwdbwd_tflops","dense_fwdbwd_tflops"}
std::string moe_cuda_bench_json(const MoECudaBenchResult& r);

}  // namespace moex::bench
