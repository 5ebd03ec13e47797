// bf16 GEMMs whose sizes change from call to call: the MoE layer's per-expert GEMMs, whose row
// counts come from each step's routing. cuBLAS picks a kernel for every exact shape, and a shape
// it has not seen costs about 0.6 ms of host time (14 us once seen; measured on the GPU machine's
// host). A training step meets dozens of new expert loads, so its first steps starved the GPU
// (docs/gpu-model.md §Kernel choice for changing shapes). Here the kernel is chosen once per band
// of sizes (eight bands per octave of the changing size) for the top of the band, and reused for
// every shape in it; only a shape the chosen kernel cannot run asks cuBLAS again. Optionally
// (MOEX_GEMM_AUTOTUNE=1) the band's kernel is the fastest of cuBLASLt's first few, timed once.
//
// The shapes are those of cuda/gemm.h: row-major C[M,N] = alpha op(A) op(B) + beta C, bf16 A and
// B, C bf16 or fp32, fp32 accumulation, `batch` entries at element strides.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <tuple>

#include "cuda/gemm.h"

namespace moex::cuda {

// Which size of the GEMM changes from call to call: m (rows of A and C) or k (the reduction).
enum class VaryingDim { kM, kK };

class VaryingSizeGemm {
 public:
  explicit VaryingSizeGemm(int device);
  ~VaryingSizeGemm();
  VaryingSizeGemm(const VaryingSizeGemm&) = delete;
  VaryingSizeGemm& operator=(const VaryingSizeGemm&) = delete;

  // `lane` (0 .. lanes()-1) picks the workspace: calls that may run at the same time on different
  // streams must use different lanes. lanes(): MOEX_EXPERT_LANES (1 to kMaxLanes; 4 when unset),
  // read once; each lane holds a 16 MiB workspace.
  static constexpr int kMaxLanes = 8;
  int lanes() const { return lanes_; }
  void run(VaryingDim varying, const GemmShape& s, const void* a, int64_t stride_a, const void* b,
           int64_t stride_b, void* c, int64_t stride_c, bool c_is_f32, int batch, float alpha,
           float beta, cudaStream_t stream, int lane = 0);

  // Kernel choices asked of cuBLAS so far: one per band, plus one per exact shape that the band's
  // kernel could not run.
  int64_t choices() const { return choices_; }
  // Choices made by timing cuBLASLt's first kTimedCandidates kernels on the first call of the
  // band (MOEX_GEMM_AUTOTUNE=1; off by default, and never while the stream is captured).
  int64_t timed_choices() const { return timed_choices_; }
  void set_autotune(bool on) { autotune_ = on; }  // tests; MOEX_GEMM_AUTOTUNE sets it at start
  static constexpr int kTimedCandidates = 8;

  // The band a changing size falls in, named by its top: sizes up to 16 are their own band; above,
  // a size between 2^i and 2^(i+1) is rounded up to a multiple of 2^i / kBandsPerOctave. The
  // kernel chosen for the top then works on at most 12.5 % more than the shape it runs.
  static constexpr int kBandsPerOctave = 8;
  static int64_t band(int64_t size);

 private:
  // Everything a kernel choice depends on: transposes, C's type, the sizes (the changing one
  // banded), leading dimensions, batch and the operands' address alignment.
  using Key = std::tuple<bool, bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                         int, int, int, int>;
  // The call a timed choice runs its candidates on.
  struct Call {
    GemmShape shape;
    const void* a;
    int64_t stride_a;
    const void* b;
    int64_t stride_b, stride_c;
    bool c_is_f32;
    int batch;
    float alpha, beta;
    cudaStream_t stream;
    void* workspace;
  };
  // cuBLASLt's first kernel for s, or with `call` (run() passes one under autotune_) the fastest
  // of its first few, timed on that call.
  bool choose(const GemmShape& s, bool c_is_f32, int batch, int align_a, int align_b, int align_c,
              cublasLtMatmulAlgo_t* algo, const Call* call = nullptr);
  cublasLtMatmulAlgo_t fastest(const cublasLtMatmulHeuristicResult_t* results, int found,
                               const Call& call);

  cublasLtHandle_t handle_ = nullptr;
  int lanes_ = 4;
  void* workspace_ = nullptr;  // lanes_ slices of workspace_bytes_
  size_t workspace_bytes_ = 0;
  std::map<Key, cublasLtMatmulAlgo_t> chosen_;  // per band
  std::map<Key, cublasLtMatmulAlgo_t> exact_;   // per exact shape the band's kernel cannot run
  int64_t choices_ = 0, timed_choices_ = 0;
  bool autotune_ = false;
  void* timing_c_ = nullptr;  // the timed candidates' C
  size_t timing_c_bytes_ = 0;
};

}  // namespace moex::cuda
