// CUDA backend foundation: the device allocator registered with core (Tensor::empty(...,
// Device::cuda()) works once init() ran), host<->device copies, and the per-stream context
// holding the cuBLAS handle and its workspace.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/tensor.h"

namespace moex::cuda {

class VaryingSizeGemm;

// Number of visible GPUs (0 when there is no driver or no device; never throws).
int device_count();
// Streaming multiprocessors of the current device (grid sizing in launchers that have a stream,
// not a CudaContext).
int current_device_sms();

// Whether launch_kernel (cuda/launch.cuh) lets kernels launch before the one ahead of them
// finishes: on unless the environment sets MOEX_PDL=0 (to measure it, or to rule it out).
bool programmatic_launch_enabled();
// Whether the few-row kernels issue their first weight loads before that wait (few_rows_mma.cuh):
// on unless MOEX_WEIGHT_PRELOAD=0.
bool weight_preload_enabled();
// The most expert rows (experts x tokens) of a model's dropless MoE forward that keeps nothing to
// take capacity mode's layout with C = T instead of the counts sync
// (MoELayerCudaOptions::token_rows_max_rows): 512 unless MOEX_TOKEN_ROWS_MAX_ROWS sets another
// count (0: never). 512 = Mixtral's 8 experts x 64 tokens, from whole decode steps on the H200
// (docs/gpu-model.md §Decoding): faster than the sync at 48 and 64 sequences, even at 96, slower
// at 128.
int64_t token_rows_max_rows();

// Registers the caching device allocator and the device copy with core. Idempotent, thread-safe.
// Throws moex::Error when no GPU is visible.
void init();

// Caching allocator: blocks are rounded to size classes and kept on free lists when released,
// so a steady-state step never calls cudaMalloc (docs/architecture.md §Core types). Device
// memory only, never managed.
struct AllocatorStats {
  size_t cuda_malloc_calls = 0;
  size_t bytes_reserved = 0;  // held from the driver
  size_t bytes_in_use = 0;
  size_t peak_bytes_in_use = 0;  // the most bytes_in_use has been
};
AllocatorStats allocator_stats();
// Returns every cached free block to the driver (for tests and shutdown).
void release_cached_blocks();

// Synchronous host<->device / device<->device copy (the hook core's Tensor::to uses).
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);

// One stream with its cuBLAS / cuBLASLt handles and a cuBLAS workspace. Every launcher takes a
// cudaStream_t; the context only bundles what a layer needs to issue work on one stream.
class CudaContext {
 public:
  explicit CudaContext(int ordinal = 0, bool own_stream = true);
  ~CudaContext();
  CudaContext(const CudaContext&) = delete;
  CudaContext& operator=(const CudaContext&) = delete;

  cudaStream_t stream() const { return stream_; }
  cublasHandle_t cublas() const { return cublas_; }
  // GEMMs whose sizes change from call to call (cuda/varying_gemm.h), made on first use.
  VaryingSizeGemm& varying_gemm();

  // Independent work spread over `lanes` streams: lane 0 is stream(), the others are side streams
  // made on first use. fork_lanes orders lanes 1..n-1 after the work queued on stream() so far;
  // join_lanes orders stream() after everything queued on them. For GEMMs too small to fill the
  // GPU alone (one expert's), which then run side by side.
  static constexpr int kMaxLanes = 8;
  cudaStream_t lane(int i);
  void fork_lanes(int lanes);
  void join_lanes(int lanes);
  int ordinal() const { return ordinal_; }
  int num_sms() const { return num_sms_; }
  void synchronize() const;

 private:
  int ordinal_ = 0;
  int num_sms_ = 0;
  bool own_stream_ = true;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::unique_ptr<VaryingSizeGemm> varying_gemm_;
  cudaStream_t lanes_[kMaxLanes] = {};       // [0] unused: lane 0 is stream_
  cudaEvent_t lane_events_[kMaxLanes] = {};  // [0] forks, [i] marks lane i's end
};

// The context every op and module on GPU `ordinal` issues its work on, created on first use and
// kept for the process: one stream per device, so the model's kernels run in program order.
CudaContext& default_context(int ordinal = 0);

// RAII timing with CUDA events (benchmarks).
class EventTimer {
 public:
  EventTimer();
  ~EventTimer();
  void start(cudaStream_t stream);
  // Milliseconds since start(); synchronizes on the stop event.
  float stop(cudaStream_t stream);

 private:
  cudaEvent_t begin_ = nullptr, end_ = nullptr;
};

// The summed stream time of many spans, without waiting at each: begin() and end() record events
// on the stream, total_ms() waits for the spans recorded so far and adds them up. Events are
// reused once folded in.
class SpanTimer {
 public:
  SpanTimer() = default;
  ~SpanTimer();
  SpanTimer(const SpanTimer&) = delete;
  SpanTimer& operator=(const SpanTimer&) = delete;
  void begin(cudaStream_t stream);
  void end(cudaStream_t stream);  // closes the span begin() opened
  double total_ms();

 private:
  struct Span {
    cudaEvent_t begin = nullptr, end = nullptr;
  };
  std::vector<Span> recorded_, free_;  // recorded_.back() may be open (end not yet recorded)
  bool open_ = false;
  double total_ms_ = 0;
};

}  // namespace moex::cuda
