// Placeholder so the CUDA backend library is never empty; the real backend lives beside it.
#include <cuda_runtime.h>

namespace moex::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}

}  // namespace moex::cuda
