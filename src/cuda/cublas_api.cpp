#include "cuda/cublas_api.h"

#include <dlfcn.h>

#include <string>
#include <vector>

#include "core/error.h"

namespace moex::cuda {
namespace {

void* open_cublas() {
  const std::string soname = "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);
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
  MOEX_THROW("cannot load ", soname, " (cuBLAS, which the CUDA backend needs): ", errors,
             ". Put the CUDA toolkit's library directory on LD_LIBRARY_PATH");
}

template <class Fn>
void resolve(void* lib, const char* name, Fn* out) {
  *out = reinterpret_cast<Fn>(dlsym(lib, name));
  MOEX_CHECK(*out != nullptr, "libcublas.so.", CUBLAS_VER_MAJOR, " has no function ", name,
             " (a cuBLAS older than the headers moex was built with?)");
}

CublasApi load() {
  void* lib = open_cublas();
  CublasApi api{};
  resolve(lib, "cublasCreate_v2", &api.create);
  resolve(lib, "cublasDestroy_v2", &api.destroy);
  resolve(lib, "cublasSetStream_v2", &api.set_stream);
  resolve(lib, "cublasSetWorkspace_v2", &api.set_workspace);
  resolve(lib, "cublasSetMathMode", &api.set_math_mode);
  resolve(lib, "cublasSgemm_v2", &api.sgemm);
  resolve(lib, "cublasGemmEx", &api.gemm_ex);
  resolve(lib, "cublasGemmBatchedEx", &api.gemm_batched_ex);
  resolve(lib, "cublasGemmStridedBatchedEx", &api.gemm_strided_batched_ex);
  resolve(lib, "cublasGemmGroupedBatchedEx", &api.gemm_grouped_batched_ex);
  return api;  // the library stays open for the life of the process
}

}  // namespace

const CublasApi& cublas_api() {
  static const CublasApi api = load();  // a failed load throws and is retried on the next call
  return api;
}

}  // namespace moex::cuda
