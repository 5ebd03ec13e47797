// Built instead of cudnn_attention.cpp where the CUDA toolkit has no cuDNN headers: the attention
// always runs moex's own kernels.
#include "core/error.h"
#include "cuda/cudnn_attention.h"

namespace moex::cuda {

bool cudnn_library_open(std::string* why) {
  if (why != nullptr) *why = "this build has no cuDNN (no cudnn.h in the CUDA toolkit)";
  return false;
}

bool cudnn_attention_supports(const AttentionParams&) {
  return false;
}

void cudnn_attention_forward(const void*, const void*, const void*, void*, float*,
                             const AttentionParams&, cudaStream_t) {
  MOEX_THROW("attention: this build has no cuDNN (no cudnn.h in the CUDA toolkit)");
}

size_t cudnn_attention_backward_workspace_bytes(const AttentionParams&) {
  MOEX_THROW("attention: this build has no cuDNN (no cudnn.h in the CUDA toolkit)");
}

void cudnn_attention_backward(const void*, const void*, const void*, const void*, const void*,
                              const float*, void*, void*, void*, void*, const AttentionParams&,
                              cudaStream_t) {
  MOEX_THROW("attention: this build has no cuDNN (no cudnn.h in the CUDA toolkit)");
}

}  // namespace moex::cuda
