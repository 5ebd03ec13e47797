// Knowledge-distillation loss of one row of logits (docs/distill.md): the teacher's and the
// student's logits softened at temperature tau, tau^2 * KL(teacher || student), fused with its
// gradient with respect to the student's logits.
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
}  // namespace moex::cpu
