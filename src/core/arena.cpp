#include "core/arena.h"

#include <algorithm>
#include <cstring>

namespace moex {

Arena::Arena(size_t capacity_bytes, Device device) : capacity_(capacity_bytes), device_(device) {
  backing_ =
      Tensor::empty(Shape{static_cast<int64_t>(capacity_bytes + kAlignment)}, DType::kU8, device);
  const uintptr_t base = reinterpret_cast<uintptr_t>(backing_.raw_data());
  base_ = reinterpret_cast<char*>((base + kAlignment - 1) / kAlignment * kAlignment);
}

Tensor Arena::alloc(const Shape& shape, DType dtype) {
  const size_t bytes = static_cast<size_t>(shape.numel()) * dtype_size(dtype);
  const size_t start = (used_ + kAlignment - 1) / kAlignment * kAlignment;
  MOEX_CHECK(start + bytes <= capacity_, "step arena full: need ", bytes, " bytes at offset ",
             start, ", capacity ", capacity_);
  used_ = start + bytes;
  high_water_ = std::max(high_water_, used_);
  return Tensor::from_external(base_ + start, shape, dtype, device_);
}

int64_t ParamBuffer::num_elements() const {
  int64_t n = 0;
  for (const Shape& shape : shapes_) n += shape.numel();
  return n;
}

int ParamBuffer::declare(const std::string& name, const Shape& shape) {
  MOEX_CHECK(!flat_.defined(), "parameter '", name, "' declared after the buffer was allocated");
  MOEX_CHECK(index_of(name) < 0, "parameter '", name, "' declared twice");
  names_.push_back(name);
  shapes_.push_back(shape);
  offsets_.push_back(total_);
  total_ += (shape.numel() + 63) / 64 * 64;
  return size() - 1;
}

int ParamBuffer::declare_contiguous(const std::vector<std::string>& names,
                                    const std::vector<Shape>& shapes) {
  MOEX_CHECK(!names.empty() && names.size() == shapes.size(),
             "declare_contiguous needs matching names and shapes");
  const int first = size();
  for (size_t i = 0; i < names.size(); ++i) {
    MOEX_CHECK(!flat_.defined(), "parameter '", names[i],
               "' declared after the buffer was allocated");
    MOEX_CHECK(index_of(names[i]) < 0, "parameter '", names[i], "' declared twice");
    names_.push_back(names[i]);
    shapes_.push_back(shapes[i]);
    offsets_.push_back(total_);
    total_ += shapes[i].numel();
  }
  total_ = (total_ + 63) / 64 * 64;
  return first;
}

Tensor ParamBuffer::span(int first, int last, const Shape& shape) const {
  MOEX_CHECK(0 <= first && first <= last && last < size(), "span [", first, ", ", last,
             "] out of range");
  MOEX_CHECK(flat_.defined(), "span of an unallocated buffer");
  int64_t elems = 0;
  for (int i = first; i <= last; ++i) {
    MOEX_CHECK(offsets_[i] == offsets_[first] + elems, "entries ", names_[first], "..",
               names_[last], " are not contiguous");
    elems += shapes_[i].numel();
  }
  MOEX_CHECK(shape.numel() == elems, "span shape ", shape.str(), " does not cover ", elems,
             " elements");
  return flat_.slice(offsets_[first], offsets_[first] + elems).view(shape);
}

void ParamBuffer::allocate(DType dtype, Device device) {
  flat_ = Tensor::empty(Shape{std::max<int64_t>(total_, 1)}, dtype, device);
  // Padding between entries is never written by its owners: zero it so that flat-buffer
  // reductions (gradient norms, optimizer steps) see zeros there, not leftover memory.
  if (device.is_cpu()) std::memset(flat_.raw_data(), 0, flat_.nbytes());
  // Entries are views of flat_: they share its storage, and so its write version.
  tensors_.clear();
  for (int i = 0; i < size(); ++i)
    tensors_.push_back(flat_.slice(offsets_[i], offsets_[i] + shapes_[i].numel()).view(shapes_[i]));
}

int ParamBuffer::index_of(const std::string& name) const {
  auto it = std::find(names_.begin(), names_.end(), name);
  return it == names_.end() ? -1 : static_cast<int>(it - names_.begin());
}

}  // namespace moex
