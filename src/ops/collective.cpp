#include "ops/collective.h"

#include "ops/device_dispatch.h"
#include "ops/profile.h"

#if MOEX_WITH_CUDA
#include "cuda/cuda_check.h"
#endif

namespace moex::ops {

namespace {

// The device of the tensors, which must be one GPU: CPU ranks use dist::Communicator.
Device gpu_of(const char* op, std::initializer_list<const Tensor*> tensors) {
  const Device dev = detail::common_device(op, tensors);
  MOEX_CHECK(dev.is_cuda(), op, ": the GPU communicator takes GPU tensors, got ", dev.str(),
             " (CPU ranks use dist::Communicator)");
  return dev;
}

// send [size * n] and recv [n] of one dtype.
void expect_blocks(const char* op, const Tensor& send, const Tensor& recv,
                   const dist::DeviceGroup& comm) {
  MOEX_CHECK(send.dtype() == recv.dtype() && send.numel() == recv.numel() * comm.size(), op,
             ": send must hold ", comm.size(), " blocks of recv's ", recv.numel(),
             " elements, got ", send.numel());
}

}  // namespace

void all_reduce_sum(const Tensor& t, dist::DeviceGroup& comm) {
  const Device dev = gpu_of("all_reduce_sum", {&t});
  const ProfileScope profile("all_reduce_sum", dev);
  MOEX_CUDA_TWIN("all_reduce_sum",
                 comm.all_reduce_sum(t.raw_data(), t.numel(), t.dtype(), detail::stream(dev)));
}

PendingCollective all_reduce_sum_detached(const Tensor& t, dist::DeviceGroup& comm) {
  PendingCollective pending{gpu_of("all_reduce_sum", {&t})};
  MOEX_CUDA_TWIN("all_reduce_sum",
                 pending.done = comm.all_reduce_sum_detached(t.raw_data(), t.numel(), t.dtype(),
                                                             detail::stream(pending.device)));
  return pending;
}

void reduce_scatter_sum(const Tensor& send, const Tensor& recv, dist::DeviceGroup& comm) {
  const Device dev = gpu_of("reduce_scatter_sum", {&send, &recv});
  expect_blocks("reduce_scatter_sum", send, recv, comm);
  const ProfileScope profile("reduce_scatter_sum", dev);
  MOEX_CUDA_TWIN("reduce_scatter_sum",
                 comm.reduce_scatter_sum(send.raw_data(), recv.raw_data(), recv.numel(),
                                         recv.dtype(), detail::stream(dev)));
}

PendingCollective reduce_scatter_sum_detached(const Tensor& send, const Tensor& recv,
                                              dist::DeviceGroup& comm) {
  PendingCollective pending{gpu_of("reduce_scatter_sum", {&send, &recv})};
  expect_blocks("reduce_scatter_sum", send, recv, comm);
  MOEX_CUDA_TWIN("reduce_scatter_sum", pending.done = comm.reduce_scatter_sum_detached(
                                           send.raw_data(), recv.raw_data(), recv.numel(),
                                           recv.dtype(), detail::stream(pending.device)));
  return pending;
}

void wait(const PendingCollective& pending) {
  if (pending.done == nullptr) return;
  MOEX_CUDA_TWIN("wait",
                 CUDA_CHECK(cudaStreamWaitEvent(detail::stream(pending.device), pending.done, 0)));
}

void all_gather(const Tensor& send, const Tensor& recv, dist::DeviceGroup& comm) {
  const Device dev = gpu_of("all_gather", {&send, &recv});
  MOEX_CHECK(send.dtype() == recv.dtype() && recv.numel() == send.numel() * comm.size(),
             "all_gather: recv must hold ", comm.size(), " blocks of send's ", send.numel(),
             " elements, got ", recv.numel());
  const ProfileScope profile("all_gather", dev);
  MOEX_CUDA_TWIN("all_gather", comm.all_gather(send.raw_data(), recv.raw_data(), send.numel(),
                                               send.dtype(), detail::stream(dev)));
}

}  // namespace moex::ops
