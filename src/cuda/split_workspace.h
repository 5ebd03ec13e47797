// Device memory of kernels whose blocks each write a part of an output and whose last block
// combines the parts (cuda/last_block.cuh): fp32 partials and one arrival counter per output unit,
// kept between launches (the counters back at 0 after each). One workspace per kernel kind and
// device; launches of one kind on one device must not overlap (moex issues them on the device's
// one stream).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <mutex>

namespace moex::cuda {

struct SplitWorkspace {
  float* partial = nullptr;
  int* counters = nullptr;  // zero between launches
};

class SplitWorkspaces {
 public:
  explicit SplitWorkspaces(const char* owner) : owner_(owner) {}
  // This device's workspace with room for at least `partial_floats` partials and `counters`
  // counters. Growing it is refused while `stream` is being captured (a captured step runs once
  // directly first); when one that exists moves, buffers_moved() (core/arena.h) makes the steps
  // captured with its old addresses capture again before they run.
  SplitWorkspace get(int64_t partial_floats, int64_t counters, cudaStream_t stream);

 private:
  static constexpr int kMaxDevices = 64;
  struct Held {
    SplitWorkspace ws;
    int64_t partial_floats = 0, counters = 0;
  };
  const char* owner_;
  std::mutex mutex_;
  Held held_[kMaxDevices];
};

}  // namespace moex::cuda
