#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>

#include "core/env.h"
#include "cuda/cublas_api.h"
#include "cuda/cuda_check.h"
#include "cuda/device.h"
#include "cuda/graph.h"
#include "cuda/varying_gemm.h"

namespace moex::cuda {

const char* cublas_status_name(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR:
      return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR:
      return "CUBLAS_STATUS_LICENSE_ERROR";
    default:
      return "CUBLAS_STATUS_UNKNOWN";
  }
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}

int current_device_sms() {
  int device = 0, sms = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

bool programmatic_launch_enabled() {
  static const bool enabled = env_on_unless_zero("MOEX_PDL");
  return enabled;
}

bool weight_preload_enabled() {
  static const bool enabled = env_on_unless_zero("MOEX_WEIGHT_PRELOAD");
  return enabled;
}

int64_t token_rows_max_rows() {
  static const int64_t rows = env_count("MOEX_TOKEN_ROWS_MAX_ROWS", 512);
  return rows;
}

namespace {

// Size classes: 512 B granularity below 1 MiB, 2 MiB above, so a freed block is reused by any
// request of the same class. Blocks are never split; a planned step allocates the same sizes
// every time, which is the case this serves.
size_t round_size(size_t bytes) {
  constexpr size_t kSmall = 512, kLarge = size_t{2} << 20, kSmallLimit = size_t{1} << 20;
  if (bytes == 0) bytes = 1;
  if (bytes < kSmallLimit) return (bytes + kSmall - 1) / kSmall * kSmall;
  return (bytes + kLarge - 1) / kLarge * kLarge;
}

class CachingAllocator final : public DeviceAllocator {
 public:
  void* allocate(size_t bytes, int ordinal) override {
    MOEX_CHECK(!capturing_on_this_thread(), "a device allocation of ", bytes,
               " bytes while a CUDA graph is being captured: a captured step may only use "
               "buffers that outlive it (docs/gpu-model.md §Decoding)");
    const size_t size = round_size(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    auto& pool = free_[ordinal];
    auto it = pool.find(size);
    void* ptr = nullptr;
    if (it != pool.end()) {
      ptr = it->second;
      pool.erase(it);
    } else {
      int current = 0;
      CUDA_CHECK(cudaGetDevice(&current));
      if (current != ordinal) CUDA_CHECK(cudaSetDevice(ordinal));
      cudaError_t err = cudaMalloc(&ptr, size);
      if (err == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        release_locked();
        err = cudaMalloc(&ptr, size);
      }
      if (current != ordinal) CUDA_CHECK(cudaSetDevice(current));
      MOEX_CHECK(err == cudaSuccess, "cudaMalloc of ", size, " bytes on cuda:", ordinal,
                 " failed: ", cudaGetErrorString(err));
      ++stats_.cuda_malloc_calls;
      stats_.bytes_reserved += size;
    }
    sizes_[ptr] = {size, ordinal};
    stats_.bytes_in_use += size;
    stats_.peak_bytes_in_use = std::max(stats_.peak_bytes_in_use, stats_.bytes_in_use);
    return ptr;
  }

  void release(void* ptr, int ordinal) override {
    if (ptr == nullptr) return;
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = sizes_.find(ptr);
    if (it == sizes_.end()) return;
    stats_.bytes_in_use -= it->second.first;
    free_[it->second.second].emplace(it->second.first, ptr);
    sizes_.erase(it);
  }

  AllocatorStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

  void release_cached() {
    std::lock_guard<std::mutex> lock(mutex_);
    release_locked();
  }

 private:
  void release_locked() {
    for (auto& [ordinal, pool] : free_) {
      for (auto& [size, ptr] : pool) {
        cudaFree(ptr);
        stats_.bytes_reserved -= size;
      }
      pool.clear();
    }
  }

  std::mutex mutex_;
  std::map<int, std::multimap<size_t, void*>> free_;
  std::unordered_map<void*, std::pair<size_t, int>> sizes_;
  AllocatorStats stats_;
};

CachingAllocator& allocator() {
  static CachingAllocator* instance = new CachingAllocator();  // outlives static tensors
  return *instance;
}

void copy_hook(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  copy_bytes(dst, dst_device, src, src_device, bytes);
}

}  // namespace

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  if (bytes == 0) return;
  cudaMemcpyKind kind = cudaMemcpyDefault;  // unified addressing resolves direction
  (void)dst_device;
  (void)src_device;
  // Tensor::to is synchronous for every stream. A pageable host->device cudaMemcpy returns once
  // the source is staged, before the DMA lands, and it is ordered only on the legacy stream: a
  // kernel on another stream could read the old bytes (this corrupted the w2 upload of the E=64
  // case, test SetParametersRoundTripE64). Fence the device on both sides.
  CUDA_CHECK(cudaDeviceSynchronize());
  CUDA_CHECK(cudaMemcpy(dst, src, bytes, kind));
  CUDA_CHECK(cudaDeviceSynchronize());
}

void init() {
  static std::once_flag once;
  std::call_once(once, [] {
    MOEX_CHECK(device_count() > 0, "no CUDA device is visible");
    register_device_allocator(DeviceKind::kCUDA, &allocator());
    register_device_copy(&copy_hook);
  });
}

AllocatorStats allocator_stats() {
  return allocator().stats();
}
void release_cached_blocks() {
  allocator().release_cached();
}

CudaContext::CudaContext(int ordinal, bool own_stream)
    : ordinal_(ordinal), own_stream_(own_stream) {
  init();
  cublas_api();  // loaded before anything this constructor would have to release on failure
  CUDA_CHECK(cudaSetDevice(ordinal));
  CUDA_CHECK(cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount, ordinal));
  // A blocking stream: it is ordered with the legacy default stream, so plain cudaMemcpy/cudaMemset
  // calls (tests, Tensor::to, user code) are never overtaken by this stream's kernels or vice
  // versa. A non-blocking stream raced pageable uploads (see copy_bytes).
  if (own_stream_) CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamDefault));
  CUBLAS_CHECK(cublas_api().create(&cublas_));
  CUBLAS_CHECK(cublas_api().set_stream(cublas_, stream_));
  // cuBLAS recommends 32 MiB of workspace on Hopper; giving it one avoids its own allocations.
  workspace_bytes_ = size_t{32} << 20;
  CUDA_CHECK(cudaMalloc(&workspace_, workspace_bytes_));
  CUBLAS_CHECK(cublas_api().set_workspace(cublas_, workspace_, workspace_bytes_));
  // Router GEMMs are fp32 by contract: keep cuBLAS off TF32.
  CUBLAS_CHECK(cublas_api().set_math_mode(cublas_, CUBLAS_DEFAULT_MATH));
}

VaryingSizeGemm& CudaContext::varying_gemm() {
  if (!varying_gemm_) varying_gemm_ = std::make_unique<VaryingSizeGemm>(ordinal_);
  return *varying_gemm_;
}

namespace {

// Makes `ordinal` the current device for its scope, then restores the one before.
class DeviceGuard {
 public:
  explicit DeviceGuard(int ordinal) {
    CUDA_CHECK(cudaGetDevice(&previous_));
    CUDA_CHECK(cudaSetDevice(ordinal));
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

}  // namespace

cudaStream_t CudaContext::lane(int i) {
  MOEX_CHECK(i >= 0 && i < kMaxLanes, "CudaContext::lane ", i, " out of range");
  if (i == 0) return stream_;
  if (lanes_[i] == nullptr) {
    const DeviceGuard on(ordinal_);
    // Non-blocking: ordered with stream() by the fork/join events only.
    CUDA_CHECK(cudaStreamCreateWithFlags(&lanes_[i], cudaStreamNonBlocking));
  }
  return lanes_[i];
}

void CudaContext::fork_lanes(int lanes) {
  MOEX_CHECK(lanes >= 1 && lanes <= kMaxLanes, "CudaContext::fork_lanes: ", lanes, " lanes");
  if (lanes == 1) return;
  for (int i = 0; i < lanes; ++i) {
    if (lane_events_[i] != nullptr) continue;
    const DeviceGuard on(ordinal_);
    CUDA_CHECK(cudaEventCreateWithFlags(&lane_events_[i], cudaEventDisableTiming));
  }
  CUDA_CHECK(cudaEventRecord(lane_events_[0], stream_));
  for (int i = 1; i < lanes; ++i) CUDA_CHECK(cudaStreamWaitEvent(lane(i), lane_events_[0], 0));
}

void CudaContext::join_lanes(int lanes) {
  for (int i = 1; i < lanes; ++i) {
    CUDA_CHECK(cudaEventRecord(lane_events_[i], lanes_[i]));
    CUDA_CHECK(cudaStreamWaitEvent(stream_, lane_events_[i], 0));
  }
}

CudaContext::~CudaContext() {
  if (stream_) cudaStreamSynchronize(stream_);
  varying_gemm_.reset();
  for (int i = 0; i < kMaxLanes; ++i) {
    if (lanes_[i] != nullptr) cudaStreamDestroy(lanes_[i]);
    if (lane_events_[i] != nullptr) cudaEventDestroy(lane_events_[i]);
  }
  if (cublas_) cublas_api().destroy(cublas_);
  if (workspace_) cudaFree(workspace_);
  if (own_stream_ && stream_) cudaStreamDestroy(stream_);
}

CudaContext& default_context(int ordinal) {
  static std::mutex mutex;
  // Never destroyed: at exit the cuBLAS teardown could run after MPI_Finalize, whose memory hooks
  // (Open MPI's patcher) then abort the process inside cublasLtDestroy, as the mpirun GPU tests
  // did; the driver releases the streams and handles with the process anyway.
  static auto* contexts = new std::map<int, std::unique_ptr<CudaContext>>();
  std::lock_guard<std::mutex> lock(mutex);
  std::unique_ptr<CudaContext>& ctx = (*contexts)[ordinal];
  if (!ctx) ctx = std::make_unique<CudaContext>(ordinal);
  return *ctx;
}

void CudaContext::synchronize() const {
  CUDA_CHECK(cudaStreamSynchronize(stream_));
}

EventTimer::EventTimer() {
  CUDA_CHECK(cudaEventCreate(&begin_));
  CUDA_CHECK(cudaEventCreate(&end_));
}
EventTimer::~EventTimer() {
  cudaEventDestroy(begin_);
  cudaEventDestroy(end_);
}
void EventTimer::start(cudaStream_t stream) {
  CUDA_CHECK(cudaEventRecord(begin_, stream));
}
float EventTimer::stop(cudaStream_t stream) {
  CUDA_CHECK(cudaEventRecord(end_, stream));
  CUDA_CHECK(cudaEventSynchronize(end_));
  float ms = 0;
  CUDA_CHECK(cudaEventElapsedTime(&ms, begin_, end_));
  return ms;
}

SpanTimer::~SpanTimer() {
  for (const std::vector<Span>* list : {&recorded_, &free_})
    for (const Span& s : *list) {
      cudaEventDestroy(s.begin);
      cudaEventDestroy(s.end);
    }
}

void SpanTimer::begin(cudaStream_t stream) {
  MOEX_CHECK(!open_, "SpanTimer: begin() twice without end()");
  if (free_.empty()) {
    Span s;
    CUDA_CHECK(cudaEventCreate(&s.begin));
    CUDA_CHECK(cudaEventCreate(&s.end));
    free_.push_back(s);
  }
  recorded_.push_back(free_.back());
  free_.pop_back();
  CUDA_CHECK(cudaEventRecord(recorded_.back().begin, stream));
  open_ = true;
}

void SpanTimer::end(cudaStream_t stream) {
  MOEX_CHECK(open_, "SpanTimer: end() without begin()");
  CUDA_CHECK(cudaEventRecord(recorded_.back().end, stream));
  open_ = false;
}

double SpanTimer::total_ms() {
  const size_t closed = recorded_.size() - (open_ ? 1 : 0);
  for (size_t i = 0; i < closed; ++i) {
    CUDA_CHECK(cudaEventSynchronize(recorded_[i].end));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, recorded_[i].begin, recorded_[i].end));
    total_ms_ += ms;
    free_.push_back(recorded_[i]);
  }
  recorded_.erase(recorded_.begin(), recorded_.begin() + static_cast<std::ptrdiff_t>(closed));
  return total_ms_;
}

}  // namespace moex::cuda
