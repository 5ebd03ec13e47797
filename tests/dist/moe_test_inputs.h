// Inputs and value access shared by the MoE layer's distributed tests (tests/dist/moe_*_test.cpp):
// every rank can make any rank's tokens, so references run locally.
#pragma once

#include <cstdint>

#include "core/rng.h"
#include "core/tensor.h"
#include "moe/moe_config.h"

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

// One configuration a test runs the layer in.
struct MoEVariant {
  const char* name;
  MoEConfig config;
  DType dtype = DType::kF32;
  bool uneven_tokens = false;  // rank r has 24 + 5 r tokens: capacities differ between ranks
};

// The small layer the variants start from: d 6, F 5, top-2 of 8 experts, capacity factor 1,
// aux and z losses on.
inline MoEConfig small_moe_config() {
  MoEConfig c;
  c.hidden_size = 6;
  c.ffn_size = 5;
  c.num_experts = 8;
  c.top_k = 2;
  c.capacity_factor_train = 1.0f;
  c.min_capacity = 1;
  c.aux_loss_coef = 0.01f;
  c.z_loss_coef = 0.001f;
  return c;
}

}  // namespace moex::testing
