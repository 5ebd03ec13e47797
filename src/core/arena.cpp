#include "core/arena.h"

#include <algorithm>
#include <atomic>
#include <cstring>

namespace moex {
namespace {
std::atomic<uint64_t> g_buffer_generation{0};
}  // namespace

uint64_t buffer_generation() {
  return g_buffer_generation.load();
}
void buffers_moved() {
  g_buffer_generation.fetch_add(1);
}

Arena::Arena(size_t capacity_bytes, Device device, bool growable)
    : device_(device), growable_(growable) {
  add_block(capacity_bytes);
}

void Arena::add_block(size_t bytes) {
  Block b;
  b.backing = Tensor::empty(Shape{static_cast<int64_t>(bytes + kAlignment)}, DType::kU8, device_);
  const uintptr_t base = reinterpret_cast<uintptr_t>(b.backing.raw_data());
  b.base = reinterpret_cast<char*>(aligned_bytes(base));
  b.bytes = bytes;
  if (!blocks_.empty()) used_before_ += used_;
  capacity_ += bytes;
  blocks_.push_back(std::move(b));
  used_ = 0;
}

Tensor Arena::alloc(const Shape& shape, DType dtype) {
  const size_t bytes = static_cast<size_t>(shape.numel()) * dtype_size(dtype);
  size_t start = aligned_bytes(used_);
  if (start + bytes > blocks_.back().bytes) {
    MOEX_CHECK(growable_, "step arena full: need ", bytes, " bytes at offset ", start,
               ", capacity ", capacity_);
    // At least double, so that a step of many allocations adds few blocks.
    add_block(std::max(bytes, capacity_));
    start = 0;
  }
  used_ = start + bytes;
  high_water_ = std::max(high_water_, used_before_ + used_);
  return Tensor::from_external(blocks_.back().base + start, shape, dtype, device_);
}

void Arena::release(const Mark& m) {
  const size_t last = blocks_.size() - 1;
  MOEX_CHECK(m.block < last || m.used <= used_, "arena release past the current allocation");
  // A block added after the mark holds only released tensors: it is reused from its start, and
  // reset() merges the blocks into one of the high-water size.
  used_ = m.block == last ? m.used : 0;
}

void Arena::reset() {
  if (blocks_.size() > 1) {
    buffers_moved();
    const size_t total = high_water_;
    blocks_.clear();
    capacity_ = 0;
    used_before_ = 0;
    add_block(total);
  }
  used_ = 0;
  used_before_ = 0;
}

int64_t ParamBuffer::num_elements() const {
  int64_t n = 0;
  for (const Shape& shape : shapes_) n += shape.numel();
  return n;
}

int ParamBuffer::declare(const std::string& name, const Shape& shape, int split_dim,
                         int split_blocks) {
  MOEX_CHECK(!flat_.defined(), "parameter '", name, "' declared after the buffer was allocated");
  MOEX_CHECK(index_of(name) < 0, "parameter '", name, "' declared twice");
  MOEX_CHECK(split_blocks >= 1 && (split_dim < 0 || (split_dim < shape.ndim() &&
                                                     shape[split_dim] % split_blocks == 0)),
             "parameter '", name, "': ", split_blocks, " blocks of dimension ", split_dim, " of ",
             shape.str());
  names_.push_back(name);
  shapes_.push_back(shape);
  split_dims_.push_back(split_dim);
  split_blocks_.push_back(split_blocks);
  offsets_.push_back(total_);
  total_ += (shape.numel() + 63) / 64 * 64;
  return size() - 1;
}

int ParamBuffer::declare_contiguous(const std::vector<std::string>& names,
                                    const std::vector<Shape>& shapes, int split_dim) {
  MOEX_CHECK(!names.empty() && names.size() == shapes.size(),
             "declare_contiguous needs matching names and shapes");
  const int first = size();
  for (size_t i = 0; i < names.size(); ++i) {
    MOEX_CHECK(!flat_.defined(), "parameter '", names[i],
               "' declared after the buffer was allocated");
    MOEX_CHECK(index_of(names[i]) < 0, "parameter '", names[i], "' declared twice");
    names_.push_back(names[i]);
    shapes_.push_back(shapes[i]);
    split_dims_.push_back(split_dim);
    split_blocks_.push_back(1);
    offsets_.push_back(total_);
    total_ += shapes[i].numel();
  }
  total_ = (total_ + 63) / 64 * 64;
  return first;
}

int64_t ParamBuffer::range_elements(int first, int last) const {
  MOEX_CHECK(0 <= first && first <= last && last < size(), "entries [", first, ", ", last,
             "] out of range");
  return offsets_[last] + shapes_[last].numel() - offsets_[first];
}

bool ParamBuffer::same_storage(int i, int j) const {
  if (backing_.size() != names_.size()) return false;
  const Tensor &a = backing_.at(i), &b = backing_.at(j);
  return a.defined() && b.defined() && a.raw_data() == b.raw_data() &&
         backing_begin_[i] == backing_begin_[j];
}

Tensor ParamBuffer::backed_slice(int first, int last, int64_t begin, int64_t end) const {
  MOEX_CHECK(!backing_.empty(), "entries ", names_[first], "..", names_[last],
             " of an unallocated buffer");
  MOEX_CHECK(same_storage(first, last), "entries ", names_[first], "..", names_[last],
             " are not in one allocation of the buffer");
  const int64_t base = backing_begin_[first];
  return backing_[first].slice(begin - base, end - base);
}

Tensor ParamBuffer::flat_range(int first, int last) const {
  const int64_t n = range_elements(first, last);
  return backed_slice(first, last, offsets_[first], offsets_[first] + n);
}

const Tensor& ParamBuffer::tensor(int i) const {
  static const Tensor kUnallocated;
  MOEX_CHECK(0 <= i && i < size(), "entry ", i, " of a buffer of ", size());
  return static_cast<size_t>(i) < tensors_.size() ? tensors_[static_cast<size_t>(i)] : kUnallocated;
}

Tensor ParamBuffer::span(int first, int last, const Shape& shape) const {
  MOEX_CHECK(0 <= first && first <= last && last < size(), "span [", first, ", ", last,
             "] out of range");
  if (!tensor(first).defined()) return Tensor();
  int64_t elems = 0;
  for (int i = first; i <= last; ++i) {
    MOEX_CHECK(offsets_[i] == offsets_[first] + elems, "entries ", names_[first], "..",
               names_[last], " are not contiguous");
    elems += shapes_[i].numel();
  }
  MOEX_CHECK(shape.numel() == elems, "span shape ", shape.str(), " does not cover ", elems,
             " elements");
  return backed_slice(first, last, offsets_[first], offsets_[first] + elems).view(shape);
}

void ParamBuffer::allocate(DType dtype, Device device) {
  allocate_in(Tensor::empty(Shape{std::max<int64_t>(total_, 1)}, dtype, device));
}

void ParamBuffer::allocate_in(const Tensor& flat) {
  MOEX_CHECK(flat.numel() == std::max<int64_t>(total_, 1),
             "ParamBuffer::allocate_in: ", flat.numel(), " elements for a buffer of ", total_);
  // Padding between entries is never written by its owners: zero it so that flat-buffer
  // reductions (gradient norms, optimizer steps) see zeros there, not leftover memory.
  if (flat.device().is_cpu()) std::memset(flat.raw_data(), 0, flat.nbytes());
  use_flat(flat);
}

void ParamBuffer::use_flat(const Tensor& flat) {
  flat_ = flat;
  // Entries are views of flat_: they share its storage, and so its write version.
  tensors_.clear();
  for (int i = 0; i < size(); ++i)
    tensors_.push_back(flat_.slice(offsets_[i], offsets_[i] + shapes_[i].numel()).view(shapes_[i]));
  backing_.assign(names_.size(), flat_);
  backing_begin_.assign(names_.size(), 0);
}

void ParamBuffer::bind_range(int first, int last, const Tensor& shaped) {
  const int64_t n = range_elements(first, last);
  MOEX_CHECK(shaped.defined() && shaped.numel() >= n, "ParamBuffer::bind_range: entries ",
             names_[first], "..", names_[last], " need ", n, " elements");
  const Tensor storage = shaped.ndim() == 1 ? shaped : shaped.view(Shape{shaped.numel()});
  flat_ = Tensor();
  tensors_.resize(names_.size());
  backing_.resize(names_.size());
  backing_begin_.resize(names_.size(), 0);
  for (int i = first; i <= last; ++i) {
    const int64_t begin = offsets_[i] - offsets_[first];
    tensors_[i] = storage.slice(begin, begin + shapes_[i].numel()).view(shapes_[i]);
    backing_[i] = storage;
    backing_begin_[i] = offsets_[first];
  }
}

ParamBuffer ParamBuffer::copy_to(Device device) const {
  MOEX_CHECK(flat_.defined(), "copy_to of an unallocated buffer");
  ParamBuffer out = *this;
  out.use_flat(flat_.to(device));
  return out;
}

ParamBuffer ParamBuffer::layout() const {
  ParamBuffer out;
  out.names_ = names_;
  out.shapes_ = shapes_;
  out.split_dims_ = split_dims_;
  out.split_blocks_ = split_blocks_;
  out.offsets_ = offsets_;
  out.total_ = total_;
  return out;
}

ParamBuffer ParamBuffer::like(DType dtype, Device device) const {
  ParamBuffer out = layout();
  out.allocate(dtype, device);
  return out;
}

int ParamBuffer::index_of(const std::string& name) const {
  auto it = std::find(names_.begin(), names_.end(), name);
  return it == names_.end() ? -1 : static_cast<int>(it - names_.begin());
}

}  // namespace moex
