// The optimizer's global gradient norm, and so clipping and the update, are the same bits for any
// OpenMP thread count.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "core/rng.h"
#include "train/optimizer.h"

namespace moex::train {
namespace {

struct StepResult {
  double norm;
  std::vector<float> params;
};

StepResult step_with_threads(int threads) {
  ParamBuffer params, grads;
  for (ParamBuffer* b : {&params, &grads}) {
    b->declare("w", Shape{700, 1001});
    b->declare("bias", Shape{1001});
    b->allocate(DType::kF32);
  }
  moex::Rng rng(3, 0);
  float* g = grads.flat().data<float>();
  float* p = params.flat().data<float>();
  for (int64_t i = 0; i < grads.flat().numel(); ++i) {
    g[i] = rng.normal() * std::pow(10.0f, 2.0f * rng.normal());
    p[i] = rng.normal();
  }
  OptimizerConfig config;
  config.grad_clip = 1.0;  // the norm is far above 1: the clip factor carries the norm's rounding
  AdamW adam(params, config);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(threads);
  StepResult result;
  result.norm = adam.step(params, grads, 1e-3, 1);
  omp_set_num_threads(saved);
  result.params.assign(p, p + params.flat().numel());
  return result;
}

TEST(AdamWGradNorm, SameBitsForAnyThreadCount) {
  const StepResult one = step_with_threads(1);
  EXPECT_GT(one.norm, 1.0);
  for (int threads : {2, 3, 7}) {
    const StepResult other = step_with_threads(threads);
    EXPECT_EQ(other.norm, one.norm) << threads << " threads";
    EXPECT_EQ(std::memcmp(other.params.data(), one.params.data(), one.params.size() * 4), 0)
        << threads << " threads";
  }
}

}  // namespace
}  // namespace moex::train
