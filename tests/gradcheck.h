// Test helpers shared by the unit tests: random fills (never zeros) and central finite differences.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "core/rng.h"

namespace moex::testing {

// Uniform in [lo, hi) from the counter-based RNG, so every test input is reproducible.
template <typename T>
std::vector<T> random_vector(size_t n, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  std::vector<T> v(n);
  for (size_t i = 0; i < n; ++i)
    v[i] = static_cast<T>(lo + (hi - lo) * philox_uniform(seed, 0x7e57, i));
  return v;
}

// ||a - b|| / max(||b||, 1e-300) over n elements.
inline double relative_l2(const double* a, const double* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
}
// Vectors of different lengths are infinitely far apart, so a result (a gradient, say) of the
// wrong size fails every `relative_l2(...) < tolerance` check instead of being compared on the
// shorter length only.
inline double relative_l2(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  return relative_l2(a.data(), b.data(), a.size());
}

// Central differences of loss() with respect to every element of x (perturbed in place and
// restored). Compare with the analytic gradient by relative_l2; in double with h = 1e-6 agreement
// is ~1e-9.
inline std::vector<double> numeric_gradient(std::vector<double>& x,
                                            const std::function<double()>& loss, double h = 1e-6) {
  std::vector<double> grad(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + h;
    const double plus = loss();
    x[i] = saved - h;
    const double minus = loss();
    x[i] = saved;
    grad[i] = (plus - minus) / (2 * h);
  }
  return grad;
}

// Scalar loss sum_i y[i] * w[i] with fixed random w: its gradient with respect to y is w.
inline double project(const std::vector<double>& y, const std::vector<double>& w) {
  double s = 0;
  for (size_t i = 0; i < y.size(); ++i) s += y[i] * w[i];
  return s;
}

}  // namespace moex::testing
