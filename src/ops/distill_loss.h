// Knowledge-distillation loss over rows of fp32 logits [n, V] (docs/distill.md), fused with its
// gradient: one chunk of the LM head's output at a time, beside the cross-entropy of the same
// rows (model/lm_head.h), so neither model's full [N, V] logits exist.
#pragma once

#include "core/tensor.h"

namespace moex::ops {

// student, teacher: f32 [n, V] on one device; targets: i32 [n] on the host (rows whose target is
// ignore_index do not count). loss_rows f32 [n] is written: tau^2 * KL(softmax(teacher/tau) ||
// softmax(student/tau)) on counted rows, 0 on the others. When dstudent (compute dtype [n, V],
// not aliasing student) is defined, grad_scale * tau * (softmax(student/tau) -
// softmax(teacher/tau)) is ADDED to it on counted rows.
void distill_loss(const Tensor& student, const Tensor& teacher, const Tensor& targets,
                  float temperature, float grad_scale, const Tensor& loss_rows,
                  const Tensor& dstudent);

// Vocabulary-parallel KD (tensor parallelism, docs/parallelism.md): student and teacher f32
// [n, Vl] hold the same columns of the full vocabulary. stats f32 [n, 4] is written: per row the
// max of student/tau over these columns, the sum of exp(student/tau - max), then the teacher's two.
void distill_partial_stats(const Tensor& student, const Tensor& teacher, float temperature,
                           const Tensor& stats);
// distill_loss on these columns, given lse f64 [n, 2] on the logits' device: each whole row's
// log-sum-exp of student/tau and of teacher/tau (every rank's stats combined). loss_rows gets
// these columns' terms of the KL sum (the rows' losses are their sums over the ranks).
void distill_partial_loss(const Tensor& student, const Tensor& teacher, const Tensor& targets,
                          float temperature, const Tensor& lse, float grad_scale,
                          const Tensor& loss_rows, const Tensor& dstudent);

}  // namespace moex::ops
