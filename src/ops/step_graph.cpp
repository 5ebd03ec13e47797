#include "ops/step_graph.h"

#include <algorithm>
#include <cstring>
#include <memory>

#include "core/arena.h"
#include "ops/device_dispatch.h"
#include "ops/profile.h"

#if MOEX_WITH_CUDA
#include "cuda/cuda_check.h"
#include "cuda/graph.h"
#endif

namespace moex::ops {

StepGraph::StepGraph(const Device& device) : device_(device) {
  MOEX_CHECK(device.is_cuda(), "StepGraph: CUDA graphs need a GPU device, got ", device.str());
}

StepGraph::~StepGraph() {
#if MOEX_WITH_CUDA
  cuda::destroy_graph(static_cast<cudaGraphExec_t>(exec_));
#endif
}

bool StepGraph::ready() const {
  return exec_ != nullptr && generation_ == buffer_generation();
}

void StepGraph::capture(const std::function<void()>& step) {
  MOEX_CUDA_TWIN("StepGraph::capture", {
    cudaStream_t stream = detail::stream(device_);
    cuda::destroy_graph(static_cast<cudaGraphExec_t>(exec_));
    exec_ = nullptr;
    cuda::begin_capture(stream);
    try {
      step();
    } catch (...) {
      cuda::end_capture(stream, false);
      throw;
    }
    exec_ = cuda::end_capture(stream, true);
    generation_ = buffer_generation();
    ++captures_;
  });
}

void StepGraph::launch() {
  MOEX_CHECK(exec_ != nullptr, "StepGraph::launch before capture");
  MOEX_CUDA_TWIN("StepGraph::launch", {
    cuda::launch_graph(static_cast<cudaGraphExec_t>(exec_), detail::stream(device_));
    ++replays_;
  });
}

StreamMark::StreamMark(const Device& device) : device_(device) {
  if (device.is_cpu()) return;
  MOEX_CUDA_TWIN("StreamMark", {
    cudaEvent_t event = nullptr;
    CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
    event_ = event;
  });
}

StreamMark::~StreamMark() {
#if MOEX_WITH_CUDA
  if (event_ != nullptr) cudaEventDestroy(static_cast<cudaEvent_t>(event_));
#endif
}

void StreamMark::record() {
  recorded_ = true;
  if (device_.is_cpu()) return;
  MOEX_CUDA_TWIN("StreamMark::record", CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(event_),
                                                                  detail::stream(device_))));
}

void StreamMark::wait() const {
  if (!recorded_ || device_.is_cpu()) return;
  MOEX_CUDA_TWIN("StreamMark::wait",
                 CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(event_))));
}

Tensor staging_tensor(const Shape& shape, DType dtype, const Device& device) {
  if (device.is_cpu()) return Tensor::empty(shape, dtype);
  Tensor t;
  MOEX_CUDA_TWIN("staging_tensor", {
    const size_t bytes =
        std::max<size_t>(1, static_cast<size_t>(shape.numel()) * dtype_size(dtype));
    void* p = nullptr;
    CUDA_CHECK(cudaMallocHost(&p, bytes));
    std::shared_ptr<const void> owner(p, [](const void* q) { cudaFreeHost(const_cast<void*>(q)); });
    t = Tensor::from_external(p, shape, dtype, Device::cpu(), std::move(owner));
  });
  return t;
}

void copy_async(const Tensor& src, const Tensor& dst) {
  MOEX_CHECK(
      src.defined() && dst.defined() && src.dtype() == dst.dtype() && src.numel() == dst.numel(),
      "copy_async: ", src.shape().str(), " ", dtype_name(src.dtype()), " into ", dst.shape().str(),
      " ", dtype_name(dst.dtype()));
  const Device sd = src.device(), dd = dst.device();
  if (sd.is_cpu() && dd.is_cpu()) {
    std::memcpy(dst.raw_data(), src.raw_data(), src.nbytes());
    return;
  }
  MOEX_CHECK(sd.is_cpu() != dd.is_cpu(), "copy_async: one side must be a host staging tensor");
  MOEX_CUDA_TWIN("copy_async", CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), src.raw_data(),
                                                          src.nbytes(), cudaMemcpyDefault,
                                                          detail::stream(sd.is_cuda() ? sd : dd))));
}

bool step_graphs_allowed() {
  return !profile_enabled();
}

}  // namespace moex::ops
