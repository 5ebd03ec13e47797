#include "ops/device_dispatch.h"

namespace moex::ops::detail {

Device common_device(const char* op, std::initializer_list<const Tensor*> ts) {
  bool found = false;
  Device device;
  for (const Tensor* t : ts) {
    if (!t->defined()) continue;
    if (!found) {
      device = t->device();
      found = true;
    }
    MOEX_CHECK(t->device() == device, op, ": tensors on ", device.str(), " and ",
               t->device().str());
  }
  MOEX_CHECK(found, op, ": no tensor given");
  return device;
}

DType compute_dtype(const Device& device) {
  return device.is_cuda() ? DType::kBF16 : DType::kF32;
}

void expect(const char* op, const char* what, const Tensor& t, DType dtype, int64_t numel) {
  MOEX_CHECK(t.defined(), op, ": ", what, " is missing");
  MOEX_CHECK(t.dtype() == dtype, op, ": ", what, " must be ", dtype_name(dtype), ", got ",
             dtype_name(t.dtype()), " ", t.shape().str());
  MOEX_CHECK(t.numel() == numel, op, ": ", what, " has shape ", t.shape().str(), ", expected ",
             numel, " elements");
}

bool expect_f32_or_gpu_bf16(const char* op, const char* what, const Tensor& t, int64_t numel) {
  const bool bf16 = t.defined() && t.dtype() == DType::kBF16 && t.device().is_cuda();
  expect(op, what, t, bf16 ? DType::kBF16 : DType::kF32, numel);
  return bf16;
}

void no_cuda(const char* op) {
  MOEX_CHECK(false, op, ": a CUDA tensor was given, but this moex was built without CUDA "
             "(configure with -DMOEX_CUDA=ON on a machine with the CUDA toolkit)");
  __builtin_unreachable();
}

}  // namespace moex::ops::detail
