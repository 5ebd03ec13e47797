#include "cuda/cublas_api.h"

#include <dlfcn.h>

#include <string>
#include <vector>

#include "core/error.h"

namespace moex::cuda {
namespace {

// libcublas or libcublasLt (`name`), of the major version moex was built against.
void* open_library(const std::string& name) {
  const std::string soname = name + ".so." + std::to_string(CUBLAS_VER_MAJOR);
  std::vector<std::string> candidates = {soname};
#ifdef MOEX_CUBLAS_DIR
  candidates.push_back(std::string(MOEX_CUBLAS_DIR) + "/" + soname);
#endif
  candidates.push_back("/usr/local/cuda/lib64/" + soname);
  candidates.push_back("/usr/local/cuda/lib/" + soname);
  std::string errors;  // what dlopen said for each candidate
  for (const std::string& path : candidates) {
    if (void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL)) return lib;
    const char* e = dlerror();
    errors += (errors.empty() ? "" : "; ") + (e != nullptr ? std::string(e) : path + ": failed");
  }
  MOEX_THROW("cannot load ", soname, " (", name, ", which the CUDA backend needs): ", errors,
             ". Put the CUDA toolkit's library directory on LD_LIBRARY_PATH");
}

template <class Fn>
void resolve(void* lib, const char* library, const char* name, Fn* out) {
  *out = reinterpret_cast<Fn>(dlsym(lib, name));
  MOEX_CHECK(*out != nullptr, library, ".so.", CUBLAS_VER_MAJOR, " has no function ", name,
             " (a cuBLAS older than the headers moex was built with?)");
}

CublasApi load() {
  void* lib = open_library("libcublas");
  const auto resolve = [lib](const char* name, auto* out) {
    return ::moex::cuda::resolve(lib, "libcublas", name, out);
  };
  CublasApi api{};
  resolve("cublasCreate_v2", &api.create);
  resolve("cublasDestroy_v2", &api.destroy);
  resolve("cublasSetStream_v2", &api.set_stream);
  resolve("cublasSetWorkspace_v2", &api.set_workspace);
  resolve("cublasSetMathMode", &api.set_math_mode);
  resolve("cublasSgemm_v2", &api.sgemm);
  resolve("cublasGemmEx", &api.gemm_ex);
  resolve("cublasGemmStridedBatchedEx", &api.gemm_strided_batched_ex);
  resolve("cublasGemmGroupedBatchedEx", &api.gemm_grouped_batched_ex);
  return api;  // the library stays open for the life of the process
}

CublasLtApi load_lt() {
  void* lib = open_library("libcublasLt");
  const auto resolve = [lib](const char* name, auto* out) {
    return ::moex::cuda::resolve(lib, "libcublasLt", name, out);
  };
  CublasLtApi api{};
  resolve("cublasLtCreate", &api.create);
  resolve("cublasLtDestroy", &api.destroy);
  resolve("cublasLtMatmulDescCreate", &api.matmul_desc_create);
  resolve("cublasLtMatmulDescDestroy", &api.matmul_desc_destroy);
  resolve("cublasLtMatmulDescSetAttribute", &api.matmul_desc_set_attribute);
  resolve("cublasLtMatrixLayoutCreate", &api.matrix_layout_create);
  resolve("cublasLtMatrixLayoutDestroy", &api.matrix_layout_destroy);
  resolve("cublasLtMatrixLayoutSetAttribute", &api.matrix_layout_set_attribute);
  resolve("cublasLtMatmulPreferenceCreate", &api.preference_create);
  resolve("cublasLtMatmulPreferenceDestroy", &api.preference_destroy);
  resolve("cublasLtMatmulPreferenceSetAttribute", &api.preference_set_attribute);
  resolve("cublasLtMatmulAlgoGetHeuristic", &api.algo_get_heuristic);
  resolve("cublasLtMatmul", &api.matmul);
  return api;
}

}  // namespace

const CublasApi& cublas_api() {
  static const CublasApi api = load();  // a failed load throws and is retried on the next call
  return api;
}

const CublasLtApi& cublaslt_api() {
  static const CublasLtApi api = load_lt();
  return api;
}

}  // namespace moex::cuda
