// Tensor: dtype, shape (<= 5 dims), device, shared storage with a byte offset.
// Row-major and contiguous; slicing along dim 0 shares storage (free).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>

#include "core/dtype.h"
#include "core/error.h"

namespace moex {

enum class DeviceKind : uint8_t { kCPU, kCUDA };

struct Device {
  DeviceKind kind = DeviceKind::kCPU;
  int ordinal = 0;

  static Device cpu() { return {DeviceKind::kCPU, 0}; }
  static Device cuda(int ordinal = 0) { return {DeviceKind::kCUDA, ordinal}; }
  bool is_cpu() const { return kind == DeviceKind::kCPU; }
  bool is_cuda() const { return kind == DeviceKind::kCUDA; }
  bool operator==(const Device& o) const { return kind == o.kind && ordinal == o.ordinal; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const;
  // "cpu", "cuda" or "cuda:N"; anything else is an error naming `what` (a config field, a flag).
  static Device parse(const std::string& text, const std::string& what);
};

class Shape {
 public:
  static constexpr int kMaxDims = 5;

  Shape() = default;
  Shape(std::initializer_list<int64_t> dims);
  template <typename It>
  Shape(It begin, It end) {
    for (It it = begin; it != end; ++it) push_back(*it);
  }

  int ndim() const { return ndim_; }
  int64_t operator[](int i) const;
  int64_t& operator[](int i);
  int64_t numel() const;
  void push_back(int64_t dim);
  bool operator==(const Shape& o) const;
  bool operator!=(const Shape& o) const { return !(*this == o); }
  std::string str() const;  // "[2, 3]"

 private:
  std::array<int64_t, kMaxDims> dims_{};
  int ndim_ = 0;
};

uint64_t next_storage_id();  // unique per process, never reused

// The machine's memory and swap in bytes (SIZE_MAX where unknown): what a CPU allocation may ask.
size_t host_memory_bytes();

// A block of memory on one device. The deleter is empty for non-owning views (arena, external).
struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device;
  std::function<void(void*)> deleter;
  const uint64_t id = next_storage_id();
  uint64_t version = 0;  // bumped by Tensor::mark_written
  ~Storage() {
    if (deleter) deleter(data);
  }
};

// Allocation on non-CPU devices is provided by the backend that registers itself (src/cuda).
struct DeviceAllocator {
  virtual ~DeviceAllocator() = default;
  virtual void* allocate(size_t bytes, int ordinal) = 0;
  virtual void release(void* ptr, int ordinal) = 0;
};
void register_device_allocator(DeviceKind kind, DeviceAllocator* allocator);
DeviceAllocator* device_allocator(DeviceKind kind);

class Tensor {
 public:
  Tensor() = default;

  // Uninitialized memory.
  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::cpu());
  // CPU only; zeros / a constant.
  static Tensor zeros(const Shape& shape, DType dtype);
  // Wraps memory someone else owns (an arena, a mapped file); the caller keeps it alive.
  static Tensor from_external(void* data, const Shape& shape, DType dtype,
                              Device device = Device::cpu());
  // Same, and holds `owner` (e.g. a memory-mapped file) until the last tensor sharing this
  // storage is gone, so views into a mapping cannot outlive it.
  static Tensor from_external(void* data, const Shape& shape, DType dtype, Device device,
                              std::shared_ptr<const void> owner);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return shape_.ndim(); }
  int64_t dim(int i) const { return shape_[i < 0 ? i + shape_.ndim() : i]; }
  int64_t numel() const { return shape_.numel(); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  Device device() const { return storage_ ? storage_->device : Device::cpu(); }

  void* raw_data() const;
  // Typed access; the element type must match the dtype.
  template <typename T>
  T* data() const {
    MOEX_CHECK(DTypeOf<T>::value == dtype_, "tensor holds ", dtype_name(dtype_), ", accessed as ",
               dtype_name(DTypeOf<T>::value));
    return static_cast<T*>(raw_data());
  }

  // Write counter of the storage, shared by every view of it. Code that changes a tensor's values
  // in place (optimizer steps, weight loading, initialization) calls mark_written(), so caches of
  // derived copies (the GPU MoE layer's device weights) compare versions instead of contents.
  uint64_t version() const { return storage_ ? storage_->version : 0; }
  void mark_written() const {
    if (storage_) ++storage_->version;
  }
  // Identifies the storage (ids are never reused, unlike addresses); 0 when undefined.
  uint64_t storage_id() const { return storage_ ? storage_->id : 0; }

  // Rows [begin, end) of dim 0, sharing storage.
  Tensor slice(int64_t begin, int64_t end) const;
  // Same storage, another shape with the same element count.
  Tensor view(const Shape& shape) const;
  // Deep copy to a device (host <-> device copies go through the registered backend).
  Tensor to(Device device) const;
  Tensor clone() const { return to(device()); }

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_bytes_ = 0;
  Shape shape_;
  DType dtype_ = DType::kF32;
};

// Host <-> device copy hook, registered by the CUDA backend.
using DeviceCopyFn = void (*)(void* dst, Device dst_device, const void* src, Device src_device,
                              size_t bytes);
void register_device_copy(DeviceCopyFn fn);

// Throws a moex::Error naming `what` unless the tensor has this dtype and shape.
void check_tensor(const Tensor& t, const char* what, DType dtype, const Shape& shape);

}  // namespace moex
