#include "core/tensor.h"

#include <sys/sysinfo.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <sstream>

namespace moex {
namespace {

DeviceAllocator* g_cuda_allocator = nullptr;
DeviceCopyFn g_device_copy = nullptr;

constexpr size_t kHostAlignment = 64;

// numel(shape) * element bytes, or an error where that does not fit in 63 bits.
size_t checked_bytes(const Shape& shape, DType dtype) {
  for (int i = 0; i < shape.ndim(); ++i)
    if (shape[i] == 0) return 0;
  int64_t bytes = static_cast<int64_t>(dtype_size(dtype));
  for (int i = 0; i < shape.ndim(); ++i)
    MOEX_CHECK(!__builtin_mul_overflow(bytes, shape[i], &bytes), "a ", dtype_name(dtype), " ",
               shape.str(), " tensor is too large to address (more than 2^63 bytes)");
  return static_cast<size_t>(bytes);
}

}  // namespace

// A host tensor larger than this can never be backed. Linux overcommits, so such a malloc may
// succeed and the process die later to the OOM killer; asking first turns an absurd size (a
// mistyped batch or cache size) into an error naming the tensor.
size_t host_memory_bytes() {
  static const size_t bytes = [] {
    struct sysinfo info {};
    if (sysinfo(&info) != 0) return SIZE_MAX;
    return (static_cast<size_t>(info.totalram) + info.totalswap) * info.mem_unit;
  }();
  return bytes;
}

std::string Device::str() const {
  return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(ordinal);
}

Device Device::parse(const std::string& text, const std::string& what) {
  if (text == "cpu") return cpu();
  if (text == "cuda") return cuda(0);
  if (text.rfind("cuda:", 0) == 0 && text.size() > 5 && text.size() < 9 &&
      text.find_first_not_of("0123456789", 5) == std::string::npos)
    return cuda(std::stoi(text.substr(5)));
  MOEX_CHECK(false, what, ": unknown device '", text, "' (expected cpu, cuda or cuda:N)");
  return cpu();
}

Shape::Shape(std::initializer_list<int64_t> dims) {
  for (int64_t d : dims) push_back(d);
}

int64_t Shape::operator[](int i) const {
  MOEX_CHECK(i >= 0 && i < ndim_, "shape index ", i, " out of range for ", str());
  return dims_[i];
}

int64_t& Shape::operator[](int i) {
  MOEX_CHECK(i >= 0 && i < ndim_, "shape index ", i, " out of range for ", str());
  return dims_[i];
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim_; ++i) n *= dims_[i];
  return n;
}

void Shape::push_back(int64_t dim) {
  MOEX_CHECK(ndim_ < kMaxDims, "a tensor has at most ", kMaxDims, " dims");
  MOEX_CHECK(dim >= 0, "negative dimension ", dim);
  dims_[ndim_++] = dim;
}

bool Shape::operator==(const Shape& o) const {
  if (ndim_ != o.ndim_) return false;
  for (int i = 0; i < ndim_; ++i)
    if (dims_[i] != o.dims_[i]) return false;
  return true;
}

std::string Shape::str() const {
  std::ostringstream out;
  out << "[";
  for (int i = 0; i < ndim_; ++i) out << (i ? ", " : "") << dims_[i];
  out << "]";
  return out.str();
}

void register_device_allocator(DeviceKind kind, DeviceAllocator* allocator) {
  MOEX_CHECK(kind == DeviceKind::kCUDA, "only CUDA allocators can be registered");
  g_cuda_allocator = allocator;
}

DeviceAllocator* device_allocator(DeviceKind kind) {
  return kind == DeviceKind::kCUDA ? g_cuda_allocator : nullptr;
}

void register_device_copy(DeviceCopyFn fn) {
  g_device_copy = fn;
}

uint64_t next_storage_id() {
  static std::atomic<uint64_t> next{1};
  return next++;
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  auto storage = std::make_shared<Storage>();
  storage->device = device;
  storage->bytes = checked_bytes(shape, dtype);
  const size_t alloc_bytes = std::max<size_t>(
      kHostAlignment, (storage->bytes + kHostAlignment - 1) / kHostAlignment * kHostAlignment);
  if (device.is_cpu()) {
    const size_t memory = host_memory_bytes();
    MOEX_CHECK(alloc_bytes <= memory, "allocating ", dtype_name(dtype), " ", shape.str(), " (",
               static_cast<double>(alloc_bytes) / (1 << 30),
               " GiB) on cpu: more than this machine's ", static_cast<double>(memory) / (1 << 30),
               " GiB of memory and swap");
    storage->data = std::aligned_alloc(kHostAlignment, alloc_bytes);
    MOEX_CHECK(storage->data != nullptr, "out of host memory allocating ", alloc_bytes, " bytes");
    storage->deleter = [](void* p) { std::free(p); };
  } else {
    DeviceAllocator* alloc = device_allocator(device.kind);
    MOEX_CHECK(alloc != nullptr, "no allocator for device ", device.str(),
               " (built without CUDA?)");
    try {
      storage->data = alloc->allocate(alloc_bytes, device.ordinal);
    } catch (const Error& e) {  // name what was asked for: an out-of-memory names the tensor
      MOEX_CHECK(false, "allocating ", dtype_name(dtype), " ", shape.str(), " (",
                 static_cast<double>(alloc_bytes) / (1 << 20), " MiB) on ", device.str(), ": ",
                 e.message());
    }
    const int ordinal = device.ordinal;
    storage->deleter = [alloc, ordinal](void* p) { alloc->release(p, ordinal); };
  }
  t.storage_ = std::move(storage);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype) {
  Tensor t = empty(shape, dtype, Device::cpu());
  std::memset(t.raw_data(), 0, t.nbytes());
  return t;
}

Tensor Tensor::from_external(void* data, const Shape& shape, DType dtype, Device device) {
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  auto storage = std::make_shared<Storage>();
  storage->data = data;
  storage->bytes = static_cast<size_t>(shape.numel()) * dtype_size(dtype);
  storage->device = device;
  t.storage_ = std::move(storage);
  return t;
}

Tensor Tensor::from_external(void* data, const Shape& shape, DType dtype, Device device,
                             std::shared_ptr<const void> owner) {
  Tensor t = from_external(data, shape, dtype, device);
  t.storage_->deleter = [owner = std::move(owner)](void*) {};
  return t;
}

void* Tensor::raw_data() const {
  MOEX_CHECK(storage_ != nullptr, "access to an undefined tensor");
  return static_cast<char*>(storage_->data) + offset_bytes_;
}

Tensor Tensor::slice(int64_t begin, int64_t end) const {
  MOEX_CHECK(ndim() >= 1, "slice needs at least one dim");
  MOEX_CHECK(0 <= begin && begin <= end && end <= shape_[0], "slice [", begin, ", ", end,
             ") out of range for dim 0 of ", shape_.str());
  Tensor t = *this;
  const size_t row_bytes = nbytes() / std::max<int64_t>(1, shape_[0]);
  t.offset_bytes_ += static_cast<size_t>(begin) * row_bytes;
  t.shape_[0] = end - begin;
  return t;
}

Tensor Tensor::view(const Shape& shape) const {
  MOEX_CHECK(shape.numel() == numel(), "view ", shape.str(), " does not match ", shape_.str());
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::to(Device device) const {
  Tensor out = empty(shape_, dtype_, device);
  if (device.is_cpu() && this->device().is_cpu()) {
    std::memcpy(out.raw_data(), raw_data(), nbytes());
  } else {
    MOEX_CHECK(g_device_copy != nullptr, "no device copy registered (built without CUDA?)");
    g_device_copy(out.raw_data(), device, raw_data(), this->device(), nbytes());
  }
  return out;
}

void check_tensor(const Tensor& t, const char* what, DType dtype, const Shape& shape) {
  MOEX_CHECK(t.defined(), what, " is undefined");
  MOEX_CHECK(t.dtype() == dtype, what, " has dtype ", dtype_name(t.dtype()), ", expected ",
             dtype_name(dtype));
  MOEX_CHECK(t.shape() == shape, what, " has shape ", t.shape().str(), ", expected ", shape.str());
}

}  // namespace moex
