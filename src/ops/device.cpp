#include "ops/device.h"

#include "ops/device_dispatch.h"

namespace moex::ops {

void use_device(const Device& device) {
  if (device.is_cpu()) return;
  MOEX_CUDA_TWIN("use_device", {
    const int count = cuda::device_count();
    MOEX_CHECK(device.ordinal < count, "device ", device.str(), " is not available: ", count,
               " GPU(s) visible");
    cuda::init();
  });
}

int device_count() {
#if MOEX_WITH_CUDA
  return cuda::device_count();
#else
  return 0;
#endif
}

void synchronize(const Device& device) {
  if (device.is_cpu()) return;
  MOEX_CUDA_TWIN("synchronize", cuda::default_context(device.ordinal).synchronize());
}

DeviceMemory device_memory(const Device& device) {
  DeviceMemory m;
  if (device.is_cpu()) return m;
  MOEX_CUDA_TWIN("device_memory", {
    const cuda::AllocatorStats s = cuda::allocator_stats();
    m.in_use = s.bytes_in_use;
    m.peak = s.peak_bytes_in_use;
  });
  return m;
}

}  // namespace moex::ops
