#include "cuda/split_workspace.h"

#include "core/arena.h"
#include "core/error.h"
#include "cuda/cuda_check.h"

namespace moex::cuda {

SplitWorkspace SplitWorkspaces::get(int64_t partial_floats, int64_t counters, cudaStream_t stream) {
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  MOEX_CHECK(device < kMaxDevices, owner_, ": device ", device, " of more than ", kMaxDevices);
  std::lock_guard<std::mutex> lock(mutex_);
  Held& h = held_[device];
  if (h.partial_floats >= partial_floats && h.counters >= counters) return h.ws;
  cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
  CUDA_CHECK(cudaStreamIsCapturing(stream, &capturing));
  MOEX_CHECK(capturing == cudaStreamCaptureStatusNone, owner_,
             ": its split workspace is made or grown outside a captured graph only (run the step "
             "once directly first)");
  const bool moved = h.ws.partial != nullptr;
  CUDA_CHECK(cudaStreamSynchronize(stream));  // a running launch may still use the old one
  if (h.partial_floats < partial_floats) {
    CUDA_CHECK(cudaFree(h.ws.partial));
    CUDA_CHECK(cudaMalloc(&h.ws.partial, sizeof(float) * partial_floats));
    h.partial_floats = partial_floats;
  }
  if (h.counters < counters) {
    CUDA_CHECK(cudaFree(h.ws.counters));
    CUDA_CHECK(cudaMalloc(&h.ws.counters, sizeof(int) * counters));
    CUDA_CHECK(cudaMemset(h.ws.counters, 0, sizeof(int) * counters));
    h.counters = counters;
  }
  CUDA_CHECK(cudaDeviceSynchronize());
  if (moved) buffers_moved();
  return h.ws;
}

}  // namespace moex::cuda
