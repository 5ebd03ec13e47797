// Knowledge-distillation loss of one row of logits (docs/distill.md): the teacher's and the
// student's logits softened at temperature tau, tau^2 * KL(teacher || student), fused with its
// gradient with respect to the student's logits. Under tensor parallelism a row's columns are
// split over ranks: each rank forms its columns' (max, sum of exponentials), the ranks combine
// them into the row's log-sum-exps, and each rank then sums its columns' share of the KL.
#pragma once

#include <cstdint>

namespace moex::cpu {

// Returns tau^2 * sum_v p_t(v) * (log p_t(v) - log p_s(v)) with p = softmax(logits / tau).
// If dstudent is not null, grad_scale * tau * (p_s - p_t) is ADDED to it (the row usually holds
// the cross-entropy gradient already); dstudent must not alias student or teacher.
template <typename T>
T distill_loss_row(const T* student,  // [vocab]
                   const T* teacher,  // [vocab]
                   int64_t vocab, T temperature, T grad_scale,
                   T* dstudent);  // [vocab] or null

// The max of x / tau over a row's columns [n] and the sum of exp(x / tau - max).
struct MaxSum {
  double max, sum;
};
template <typename T>
MaxSum max_sum_scaled(const T* x, int64_t n, double inv_tau);

// distill_loss_row's terms over `n` of a row's columns, given the whole row's log-sum-exps of
// student / tau (lse_s) and teacher / tau (lse_t): tau^2 * sum over these columns of
// p_t (log p_t - log p_s), and (dstudent not null) grad_scale * tau * (p_s - p_t) added.
template <typename T>
double distill_columns(const T* student, const T* teacher, int64_t n, double temperature,
                       double lse_s, double lse_t, double grad_scale, T* dstudent);

}  // namespace moex::cpu
