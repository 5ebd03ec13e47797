// Step arena: one buffer planned at start-up, bump-allocated during a step, reset after it.
// Nothing is freed one by one, so the hot path never calls malloc/cudaMalloc.
#pragma once

#include <string>
#include <vector>

#include "core/tensor.h"

namespace moex {

class Arena {
 public:
  static constexpr size_t kAlignment = 256;  // enough for 16-byte vector loads and TMA

  Arena(size_t capacity_bytes, Device device = Device::cpu());

  // A tensor in the arena; valid until the next reset(). Throws when the arena is full.
  Tensor alloc(const Shape& shape, DType dtype);
  void reset() { used_ = 0; }

  size_t used() const { return used_; }
  size_t high_water() const { return high_water_; }
  size_t capacity() const { return capacity_; }
  Device device() const { return device_; }

 private:
  Tensor backing_;        // [capacity + kAlignment] u8
  char* base_ = nullptr;  // first aligned byte of backing_
  size_t capacity_ = 0;
  size_t used_ = 0;
  size_t high_water_ = 0;
  Device device_;
};

// Parameters (or gradients, or optimizer state) of a model laid out in one flat buffer:
// declare every tensor first, then allocate once; each tensor is a view into the buffer.
class ParamBuffer {
 public:
  // Returns the index of the new entry; the shapes are fixed from here on.
  int declare(const std::string& name, const Shape& shape);
  // Declares entries back to back with no padding between them, so that one view can span them
  // (e.g. gate_proj then up_proj read as one fused [2F, d] matrix). Returns the first index.
  int declare_contiguous(const std::vector<std::string>& names, const std::vector<Shape>& shapes);
  // A view over entries first..last (contiguous ones), as one tensor of `shape`.
  Tensor span(int first, int last, const Shape& shape) const;
  void allocate(DType dtype, Device device = Device::cpu());

  int size() const { return static_cast<int>(names_.size()); }
  const std::string& name(int i) const { return names_.at(i); }
  const Tensor& tensor(int i) const { return tensors_.at(i); }
  int index_of(const std::string& name) const;       // -1 if absent
  const Tensor& flat() const { return flat_; }       // [total] of the buffer's dtype
  int64_t total_elements() const { return total_; }  // with the 64-element alignment padding
  int64_t num_elements() const;                      // declared elements, without padding

 private:
  std::vector<std::string> names_;
  std::vector<Shape> shapes_;
  std::vector<int64_t> offsets_;  // element offset of each entry, aligned to 64 elements
  std::vector<Tensor> tensors_;
  Tensor flat_;
  int64_t total_ = 0;
};

}  // namespace moex
