#include "ops/collective.h"

#include "ops/device_dispatch.h"
#include "ops/profile.h"

namespace moex::ops {

void all_reduce_sum(const Tensor& t, dist::DeviceGroup& comm) {
  const Device dev = detail::common_device("all_reduce_sum", {&t});
  MOEX_CHECK(dev.is_cuda(), "all_reduce_sum: the GPU communicator takes GPU tensors, got ",
             dev.str(), " (CPU ranks use dist::Communicator)");
  const ProfileScope profile("all_reduce_sum", dev);
  MOEX_CUDA_TWIN("all_reduce_sum",
                 comm.all_reduce_sum(t.raw_data(), t.numel(), t.dtype(), detail::stream(dev)));
}

}  // namespace moex::ops
