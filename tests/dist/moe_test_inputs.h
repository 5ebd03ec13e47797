// Inputs and value access shared by the MoE layer's distributed tests (tests/dist/moe_*_test.cpp):
// every rank can make any rank's tokens, so references run locally.
#pragma once

#include <cstdint>

#include "core/rng.h"
#include "core/tensor.h"

namespace moex::testing {

// Philox-uniform values in [-1, 1) from (seed, stream), f32 or f64.
inline Tensor random_tensor(const Shape& shape, DType dtype, uint64_t seed, uint64_t stream) {
  Tensor t = Tensor::empty(shape, dtype);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const double v = 2.0 * philox_uniform(seed, stream, static_cast<uint64_t>(i)) - 1.0;
    if (dtype == DType::kF64) {
      t.data<double>()[i] = v;
    } else {
      t.data<float>()[i] = static_cast<float>(v);
    }
  }
  return t;
}

// Element i of an f32 or f64 tensor.
inline double value_at(const Tensor& t, int64_t i) {
  return t.dtype() == DType::kF64 ? t.data<double>()[i] : t.data<float>()[i];
}

}  // namespace moex::testing
