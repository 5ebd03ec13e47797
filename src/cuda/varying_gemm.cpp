#include "cuda/varying_gemm.h"

#include <algorithm>
#include <utility>

#include "core/env.h"
#include "cuda/cublas_api.h"
#include "cuda/cuda_check.h"

namespace moex::cuda {
namespace {

// The largest power of two (at most 256) that divides the operand's address, its row stride and
// its batch stride (in bytes): what cuBLASLt may assume of every row of every batch entry.
int alignment_of(const void* p, int64_t ld, int64_t stride, int batch, int64_t elem_bytes) {
  uint64_t a = reinterpret_cast<uintptr_t>(p) | static_cast<uint64_t>(ld * elem_bytes);
  if (batch > 1) a |= static_cast<uint64_t>(stride * elem_bytes);
  int align = 256;
  while (align > 1 && a % align != 0) align /= 2;
  return align;
}

// The descriptors of one call, destroyed with it. Column-major view of the row-major product, as
// in cuda/gemm.cu: C^T[N,M] = op(B)^T op(A)^T, so cuBLASLt's A is our B and its B is our A.
struct Descriptors {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;

  Descriptors(const GemmShape& s, bool c_is_f32, int batch, int64_t stride_a, int64_t stride_b,
              int64_t stride_c) {
    try {
      create(s, c_is_f32, batch, stride_a, stride_b, stride_c);
    } catch (...) {
      release();
      throw;
    }
  }
  ~Descriptors() { release(); }
  Descriptors(const Descriptors&) = delete;
  Descriptors& operator=(const Descriptors&) = delete;

 private:
  void create(const GemmShape& s, bool c_is_f32, int batch, int64_t stride_a, int64_t stride_b,
              int64_t stride_c) {
    const CublasLtApi& lt = cublaslt_api();
    CUBLAS_CHECK(lt.matmul_desc_create(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t op_b = s.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_a = s.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_CHECK(
        lt.matmul_desc_set_attribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &op_b, sizeof(op_b)));
    CUBLAS_CHECK(
        lt.matmul_desc_set_attribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &op_a, sizeof(op_a)));
    // Stored (untransposed) column-major shapes: B is [K,N] row-major = [N,K] column-major, etc.
    CUBLAS_CHECK(lt.matrix_layout_create(&a, CUDA_R_16BF, s.trans_b ? s.k : s.n,
                                         s.trans_b ? s.n : s.k, s.ldb));
    CUBLAS_CHECK(lt.matrix_layout_create(&b, CUDA_R_16BF, s.trans_a ? s.m : s.k,
                                         s.trans_a ? s.k : s.m, s.lda));
    CUBLAS_CHECK(lt.matrix_layout_create(&c, c_is_f32 ? CUDA_R_32F : CUDA_R_16BF, s.n, s.m, s.ldc));
    if (batch == 1) return;
    const int32_t count = batch;
    const std::pair<cublasLtMatrixLayout_t, int64_t> strided[] = {
        {a, stride_b}, {b, stride_a}, {c, stride_c}};
    for (const auto& [layout, stride] : strided) {
      CUBLAS_CHECK(lt.matrix_layout_set_attribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                                                  &count, sizeof(count)));
      CUBLAS_CHECK(lt.matrix_layout_set_attribute(
          layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
    }
  }
  void release() {
    const CublasLtApi& lt = cublaslt_api();
    for (cublasLtMatrixLayout_t l : {a, b, c})
      if (l != nullptr) lt.matrix_layout_destroy(l);
    if (op != nullptr) lt.matmul_desc_destroy(op);
    op = nullptr;
    a = b = c = nullptr;
  }
};
}  // namespace

int64_t VaryingSizeGemm::band(int64_t size) {
  if (size <= 16) return size;
  int64_t p = 1;  // the largest power of two below size
  while (p * 2 < size) p *= 2;
  const int64_t step = std::max<int64_t>(1, p / kBandsPerOctave);
  return (size + step - 1) / step * step;
}

VaryingSizeGemm::VaryingSizeGemm(int device) {
  const CublasLtApi& lt = cublaslt_api();
  CUDA_CHECK(cudaSetDevice(device));
  CUBLAS_CHECK(lt.create(&handle_));
  autotune_ = env_count("MOEX_GEMM_AUTOTUNE", 0) > 0;
  const int64_t lanes = env_count("MOEX_EXPERT_LANES", 4);
  MOEX_CHECK(lanes >= 1 && lanes <= kMaxLanes, "MOEX_EXPERT_LANES must be 1 to ", kMaxLanes,
             ", got ", lanes);
  lanes_ = static_cast<int>(lanes);
  workspace_bytes_ = size_t{16} << 20;  // per lane; cuBLAS recommends 32 MiB on Hopper in all
  const cudaError_t st = cudaMalloc(&workspace_, workspace_bytes_ * lanes_);
  if (st != cudaSuccess) {
    lt.destroy(handle_);
    CUDA_CHECK(st);
  }
}

VaryingSizeGemm::~VaryingSizeGemm() {
  if (handle_ != nullptr) cublaslt_api().destroy(handle_);
  if (workspace_ != nullptr) cudaFree(workspace_);
  if (timing_c_ != nullptr) cudaFree(timing_c_);
}

bool VaryingSizeGemm::choose(const GemmShape& s, bool c_is_f32, int batch, int align_a, int align_b,
                             int align_c, cublasLtMatmulAlgo_t* algo, const Call* call) {
  const CublasLtApi& lt = cublaslt_api();
  // Strides of the chosen shape: packed, as large as the band's matrices.
  const int64_t stride_a = (s.trans_a ? s.k : s.m) * s.lda;
  const int64_t stride_b = (s.trans_b ? s.n : s.k) * s.ldb;
  const Descriptors d(s, c_is_f32, batch, stride_a, stride_b, s.m * s.ldc);
  cublasLtMatmulPreference_t pref = nullptr;
  CUBLAS_CHECK(lt.preference_create(&pref));
  const uint32_t aligns[] = {static_cast<uint32_t>(align_b), static_cast<uint32_t>(align_a),
                             static_cast<uint32_t>(align_c), static_cast<uint32_t>(align_c)};
  const cublasLtMatmulPreferenceAttributes_t names[] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  cublasStatus_t st = lt.preference_set_attribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                  &workspace_bytes_, sizeof(workspace_bytes_));
  for (int i = 0; i < 4 && st == CUBLAS_STATUS_SUCCESS; ++i)
    st = lt.preference_set_attribute(pref, names[i], &aligns[i], sizeof(aligns[i]));
  // Timed choice: up to kTimedCandidates of cuBLASLt's ranking; else its first.
  const bool timed = call != nullptr;
  cublasLtMatmulHeuristicResult_t results[kTimedCandidates]{};
  int found = 0;
  if (st == CUBLAS_STATUS_SUCCESS)
    st = lt.algo_get_heuristic(handle_, d.op, d.a, d.b, d.c, d.c, pref,
                               timed ? kTimedCandidates : 1, results, &found);
  lt.preference_destroy(pref);
  ++choices_;
  if (st == CUBLAS_STATUS_NOT_SUPPORTED) return false;  // how cuBLASLt says it found none
  CUBLAS_CHECK(st);
  if (found == 0 || results[0].state != CUBLAS_STATUS_SUCCESS) return false;
  *algo = results[0].algo;
  if (timed && found > 1) *algo = fastest(results, found, *call);
  return true;
}

cublasLtMatmulAlgo_t VaryingSizeGemm::fastest(const cublasLtMatmulHeuristicResult_t* results,
                                              int found, const Call& call) {
  // Timed on the call's own shape and operands, with C in a scratch buffer (zeroed once, so a
  // beta of 1 reads finite values) so the real C is not touched.
  const GemmShape& s = call.shape;
  const size_t c_elems =
      static_cast<size_t>(call.batch - 1) * call.stride_c + static_cast<size_t>(s.m) * s.ldc;
  const size_t c_bytes = c_elems * (call.c_is_f32 ? 4 : 2);
  if (c_bytes > timing_c_bytes_) {
    CUDA_CHECK(cudaDeviceSynchronize());
    if (timing_c_ != nullptr) CUDA_CHECK(cudaFree(timing_c_));
    timing_c_ = nullptr;
    timing_c_bytes_ = 0;
    CUDA_CHECK(cudaMalloc(&timing_c_, c_bytes));
    CUDA_CHECK(cudaMemset(timing_c_, 0, c_bytes));
    timing_c_bytes_ = c_bytes;
  }
  const CublasLtApi& lt = cublaslt_api();
  const Descriptors d(s, call.c_is_f32, call.batch, call.stride_a, call.stride_b, call.stride_c);
  cudaEvent_t start = nullptr, stop = nullptr;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  cublasLtMatmulAlgo_t best = results[0].algo;
  float best_ms = -1.0f;
  for (int i = 0; i < found; ++i) {
    if (results[i].state != CUBLAS_STATUS_SUCCESS) continue;
    auto once = [&] {
      return lt.matmul(handle_, d.op, &call.alpha, call.b, d.a, call.a, d.b, &call.beta, timing_c_,
                       d.c, timing_c_, d.c, &results[i].algo, call.workspace, workspace_bytes_,
                       call.stream);
    };
    if (once() != CUBLAS_STATUS_SUCCESS) continue;  // cannot run this member of the band
    CUDA_CHECK(cudaEventRecord(start, call.stream));
    constexpr int kReps = 3;
    for (int r = 0; r < kReps; ++r) CUBLAS_CHECK(once());
    CUDA_CHECK(cudaEventRecord(stop, call.stream));
    CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    if (best_ms < 0 || ms < best_ms) {
      best_ms = ms;
      best = results[i].algo;
    }
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  ++timed_choices_;
  return best;
}

void VaryingSizeGemm::run(VaryingDim varying, const GemmShape& s, const void* a, int64_t stride_a,
                          const void* b, int64_t stride_b, void* c, int64_t stride_c, bool c_is_f32,
                          int batch, float alpha, float beta, cudaStream_t stream, int lane) {
  MOEX_CHECK(lane >= 0 && lane < lanes_, "VaryingSizeGemm: lane ", lane, " out of range");
  void* workspace = static_cast<char*>(workspace_) + workspace_bytes_ * lane;
  check_gemm_shape(s);
  MOEX_CHECK(batch >= 1, "VaryingSizeGemm: batch must be >= 1, got ", batch);
  if (s.m == 0 || s.n == 0) return;
  if (s.k == 0 && beta == 1.0f) return;  // C += 0
  MOEX_CHECK(s.k > 0, "VaryingSizeGemm: k = 0 with beta ", beta, " (no product to compute)");
  const CublasLtApi& lt = cublaslt_api();
  const int align_a = alignment_of(a, s.lda, stride_a, batch, 2);
  const int align_b = alignment_of(b, s.ldb, stride_b, batch, 2);
  const int align_c = alignment_of(c, s.ldc, stride_c, batch, c_is_f32 ? 4 : 2);
  // The band's largest shape, the one the kernel is chosen for; the exact shape where the band's
  // top would not fit the leading dimensions (the changing size is a stored row's length).
  GemmShape top = s;
  if (varying == VaryingDim::kM) top.m = band(s.m);
  if (varying == VaryingDim::kK) top.k = band(s.k);
  if (top.lda < (s.trans_a ? top.m : top.k) || top.ldb < (s.trans_b ? top.k : top.n)) top = s;
  const Key key{s.trans_a, s.trans_b, c_is_f32, top.m,   s.n,     top.k,  s.lda,
                s.ldb,     s.ldc,     batch,    align_a, align_b, align_c};
  auto it = chosen_.find(key);
  if (it == chosen_.end()) {
    cublasLtMatmulAlgo_t algo{};
    // Timed with autotune_, but not while the stream is captured into a graph (it would sync
    // inside the capture).
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    if (autotune_) CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
    const Call call{s,        a,     stride_a, b,    stride_b, stride_c,
                    c_is_f32, batch, alpha,    beta, stream,   workspace};
    const Call* timed = autotune_ && capture == cudaStreamCaptureStatusNone ? &call : nullptr;
    if (!choose(top, c_is_f32, batch, align_a, align_b, align_c, &algo, timed)) {
      MOEX_CHECK(choose(s, c_is_f32, batch, align_a, align_b, align_c, &algo),
                 "VaryingSizeGemm: cuBLASLt has no kernel for m=", s.m, " n=", s.n, " k=", s.k,
                 " batch=", batch);
    }
    it = chosen_.emplace(key, algo).first;
  }
  const Descriptors d(s, c_is_f32, batch, stride_a, stride_b, stride_c);
  cublasStatus_t st = lt.matmul(handle_, d.op, &alpha, b, d.a, a, d.b, &beta, c, d.c, c, d.c,
                                &it->second, workspace, workspace_bytes_, stream);
  if (st == CUBLAS_STATUS_SUCCESS) return;
  // The band's kernel cannot run this shape: the choice for the exact shape, kept apart.
  MOEX_CHECK(st == CUBLAS_STATUS_NOT_SUPPORTED || st == CUBLAS_STATUS_INVALID_VALUE,
             "VaryingSizeGemm: cuBLASLt failed (", cublas_status_name(st), ") for m=", s.m,
             " n=", s.n, " k=", s.k, " batch=", batch);
  const Key exact_key{s.trans_a, s.trans_b, c_is_f32, s.m,     s.n,     s.k,    s.lda,
                      s.ldb,     s.ldc,     batch,    align_a, align_b, align_c};
  auto exact = exact_.find(exact_key);
  if (exact == exact_.end()) {
    cublasLtMatmulAlgo_t algo{};
    MOEX_CHECK(choose(s, c_is_f32, batch, align_a, align_b, align_c, &algo),
               "VaryingSizeGemm: cuBLASLt has no kernel for m=", s.m, " n=", s.n, " k=", s.k,
               " batch=", batch, " (", cublas_status_name(st), " with the band's)");
    exact = exact_.emplace(exact_key, algo).first;
  }
  CUBLAS_CHECK(lt.matmul(handle_, d.op, &alpha, b, d.a, a, d.b, &beta, c, d.c, c, d.c,
                         &exact->second, workspace, workspace_bytes_, stream));
}

}  // namespace moex::cuda
