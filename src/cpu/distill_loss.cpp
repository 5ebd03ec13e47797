#include "cpu/distill_loss.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace moex::cpu {

template <typename T>
MaxSum max_sum_scaled(const T* x, int64_t n, double inv_tau) {
  double mx = -INFINITY;
  for (int64_t c = 0; c < n; ++c) mx = std::max(mx, static_cast<double>(x[c]) * inv_tau);
  double sum = 0;
  for (int64_t c = 0; c < n; ++c) sum += std::exp(static_cast<double>(x[c]) * inv_tau - mx);
  return {mx, sum};
}

template <typename T>
double distill_columns(const T* student, const T* teacher, int64_t n, double temperature,
                       double lse_s, double lse_t, double grad_scale, T* dstudent) {
  const double tau = temperature, inv_tau = 1.0 / tau;
  double kl = 0;
  for (int64_t c = 0; c < n; ++c) {
    const double log_pt = static_cast<double>(teacher[c]) * inv_tau - lse_t;
    const double log_ps = static_cast<double>(student[c]) * inv_tau - lse_s;
    const double pt = std::exp(log_pt);
    kl += pt * (log_pt - log_ps);  // pt == 0 gives 0 (log_pt is finite for finite logits)
    if (dstudent) dstudent[c] += static_cast<T>(grad_scale * tau * (std::exp(log_ps) - pt));
  }
  return tau * tau * kl;
}

template <typename T>
T distill_loss_row(const T* student, const T* teacher, int64_t vocab, T temperature, T grad_scale,
                   T* dstudent) {
  MOEX_CHECK(vocab > 0, "distill_loss: vocab must be > 0, got ", vocab);
  MOEX_CHECK(temperature > 0, "distill_loss: temperature must be > 0, got ", temperature);
  // The sums run in double whatever T is: a 32k-entry KL of nearly equal distributions is a
  // small difference of large terms.
  const double inv_tau = 1.0 / static_cast<double>(temperature);
  const MaxSum s = max_sum_scaled(student, vocab, inv_tau);
  const MaxSum t = max_sum_scaled(teacher, vocab, inv_tau);
  return static_cast<T>(distill_columns(student, teacher, vocab, temperature,
                                        s.max + std::log(s.sum), t.max + std::log(t.sum),
                                        grad_scale, dstudent));
}

template float distill_loss_row<float>(const float*, const float*, int64_t, float, float, float*);
template double distill_loss_row<double>(const double*, const double*, int64_t, double, double,
                                         double*);
template MaxSum max_sum_scaled<float>(const float*, int64_t, double);
template double distill_columns<float>(const float*, const float*, int64_t, double, double, double,
                                       double, float*);

}  // namespace moex::cpu
