// Bringing up a device for the ops: a GPU model, trainer or benchmark calls use_device() first.
#pragma once

#include "core/tensor.h"

namespace moex::ops {

// Checks that the device exists and registers its backend (allocator, copies); a CUDA device in a
// build without CUDA, or on a machine without that GPU, is one clear error naming it.
void use_device(const Device& device);
// GPUs visible to this process (0 in a build without CUDA).
int device_count();
// Waits until every op queued on the device has finished (timing, host reads).
void synchronize(const Device& device);
// Bytes of device memory in use by tensors and at most so far; on the CPU, the process's resident
// memory now and at its peak (everything, not only tensors).
struct DeviceMemory {
  size_t in_use = 0, peak = 0;
};
DeviceMemory device_memory(const Device& device);

}  // namespace moex::ops
