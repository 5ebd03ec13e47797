// Helpers of the kernel-level GPU tests: random inputs (never zeros), bf16 rounding so the CPU twin
// sees the numbers the GPU stores, device buffers poisoned with 0xFF bytes (NaN in fp32 and bf16),
// relative L2 error, bit comparison, and a bandwidth probe (printed, never asserted).
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"
#include "cuda/cuda_check.h"
#include "cuda/device.h"
#include "cuda/random_fill.h"

namespace moex::kt {

inline std::vector<float> rand_vec(size_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f,
                                   uint64_t stream = 0x7e5) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = lo + (hi - lo) * philox_uniform(seed, stream, i);
  return v;
}
inline std::vector<float> round_bf16(std::vector<float> v) {
  for (float& x : v) x = bf16_to_f32(f32_to_bf16(x));
  return v;
}
inline std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = f32_to_bf16(v[i]);
  return out;
}
inline double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;  // an unwritten (poisoned) or broken element
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}
template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// A device buffer poisoned with 0xFF bytes.
struct DevBuf {
  void* ptr = nullptr;
  size_t bytes = 0;
  explicit DevBuf(size_t n) : bytes(n) {
    CUDA_CHECK(cudaMalloc(&ptr, std::max<size_t>(n, 16)));
    poison();
  }
  ~DevBuf() { cudaFree(ptr); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  DevBuf(DevBuf&& o) noexcept : ptr(o.ptr), bytes(o.bytes) { o.ptr = nullptr; }
  void poison() {
    CUDA_CHECK(cudaMemset(ptr, 0xFF, std::max<size_t>(bytes, 16)));
    CUDA_CHECK(cudaDeviceSynchronize());
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr);
  }
};

template <typename T>
void upload_to(void* dst, const std::vector<T>& v) {
  CUDA_CHECK(cudaMemcpy(dst, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaDeviceSynchronize());  // a pageable copy may return before its DMA lands
}
template <typename T>
DevBuf upload(const std::vector<T>& v) {
  DevBuf b(v.size() * sizeof(T));
  upload_to(b.ptr, v);
  return b;
}
template <typename T>
std::vector<T> download(const void* p, size_t n) {
  std::vector<T> v(n);
  CUDA_CHECK(cudaDeviceSynchronize());
  CUDA_CHECK(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
  return v;
}
inline std::vector<float> download_bf16(const void* p, size_t n) {
  const auto raw = download<uint16_t>(p, n);
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = bf16_to_f32(raw[i]);
  return v;
}

// Large random device buffers for the bandwidth probes, filled on the device.
inline DevBuf dev_rand_f32(int64_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  DevBuf b(n * 4);
  cuda::fill_uniform_f32(b.as<float>(), n, seed, 0, lo, hi, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  return b;
}
inline DevBuf dev_rand_bf16(int64_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  DevBuf b(n * 2);
  cuda::fill_uniform_bf16(b.ptr, n, seed, 0, lo, hi, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  return b;
}

class GpuKernel : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no GPU visible";
    cuda::init();
  }
};

// Mean milliseconds of fn() on `stream` over iters calls after two warm-up calls.
template <typename F>
double mean_ms(cudaStream_t stream, F&& fn, int iters = 20) {
  fn();
  fn();
  CUDA_CHECK(cudaStreamSynchronize(stream));
  cuda::EventTimer timer;
  timer.start(stream);
  for (int i = 0; i < iters; ++i) fn();
  return timer.stop(stream) / iters;
}

// mean_ms of fn(), printed with the GB/s of `bytes` moved per call. Informational only.
template <typename F>
double report_bandwidth(const char* what, double bytes, cudaStream_t stream, F&& fn,
                        int iters = 20) {
  const double ms = mean_ms(stream, fn, iters);
  const double gbs = bytes / (ms * 1e-3) / 1e9;
  std::printf("[bandwidth] %-44s %9.1f us  %7.0f GB/s\n", what, ms * 1e3, gbs);
  std::fflush(stdout);
  return gbs;
}

}  // namespace moex::kt
