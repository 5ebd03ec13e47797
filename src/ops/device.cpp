#include "ops/device.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>

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
  if (device.is_cpu()) {
    // The process's resident memory: tensors are not counted apart on the CPU.
    rusage usage{};
    if (getrusage(RUSAGE_SELF, &usage) == 0) m.peak = static_cast<size_t>(usage.ru_maxrss) * 1024;
    long pages = 0, resident = 0;
    if (FILE* f = std::fopen("/proc/self/statm", "r")) {
      if (std::fscanf(f, "%ld %ld", &pages, &resident) == 2)
        m.in_use = static_cast<size_t>(resident) * static_cast<size_t>(sysconf(_SC_PAGESIZE));
      std::fclose(f);
    }
    return m;
  }
  MOEX_CUDA_TWIN("device_memory", {
    const cuda::AllocatorStats s = cuda::allocator_stats();
    m.in_use = s.bytes_in_use;
    m.peak = s.peak_bytes_in_use;
  });
  return m;
}

}  // namespace moex::ops
