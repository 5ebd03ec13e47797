// exp over a row for the softmax family. glibc's expf is a scalar call (its vector variants need
// -ffast-math), which made exp the bottleneck of attention and of the loss over a large vocab; the
// fp32 version here runs 8 lanes at a time with GCC/Clang vector extensions (AVX2 when the CPU
// has it).
#pragma once

#include <cstdint>

namespace moex::cpu {

// y[i] = exp(x[i] - shift) for i < n; returns the sum of the y[i] (in a fixed order). y may alias
// x, or be null to get the sum alone. Callers pass shift = max(x) (or logsumexp), so x - shift <=
// 0. fp32: Cody-Waite reduction and a degree-6 polynomial, relative error < 3e-7; x - shift < -87.3
// (where expf would be denormal) gives 0, -inf gives 0, NaN gives NaN.
// fp64 (the gradient-check oracle) uses libm's exp.
float exp_shifted_sum(const float* x, float shift, int64_t n, float* y);
double exp_shifted_sum(const double* x, double shift, int64_t n, double* y);

}  // namespace moex::cpu
