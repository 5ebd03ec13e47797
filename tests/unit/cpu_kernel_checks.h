// Helpers shared by the cpu_* kernel tests (the finite-difference helpers are in gradcheck.h).
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "gradcheck.h"

namespace moex::testing {

// f() must throw moex::Error whose message contains every one of `names` (the argument at fault).
template <typename F>
void expect_error_naming(F&& f, const std::vector<std::string>& names) {
  try {
    f();
    ADD_FAILURE() << "expected moex::Error naming " << names.front();
  } catch (const Error& e) {
    const std::string what = e.what();
    for (const std::string& name : names) {
      EXPECT_NE(what.find(name), std::string::npos) << "message lacks '" << name << "': " << what;
    }
  }
}

// An f32 host tensor of `shape` filled with random_vector's uniform numbers in [lo, hi).
inline Tensor random_tensor(const Shape& shape, uint64_t seed, double lo, double hi) {
  Tensor t = Tensor::empty(shape, DType::kF32);
  const std::vector<float> v = random_vector<float>(static_cast<size_t>(t.numel()), seed, lo, hi);
  std::copy(v.begin(), v.end(), t.data<float>());
  return t;
}

template <typename To, typename From>
std::vector<To> cast_vector(const std::vector<From>& v) {
  return std::vector<To>(v.begin(), v.end());
}

}  // namespace moex::testing
