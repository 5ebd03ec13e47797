// The LM head and its cross-entropy, chunked over rows: each chunk's fp32 logits [rows, V] are
// made, turned into losses and (when training) into the gradient of the hidden states and of the
// head weight at once, then dropped, so the full [N, V] logits and their gradient never exist.
// With soft targets (knowledge distillation, docs/distill.md) the teacher's logits of the same
// chunk are made from its hidden states and head beside the student's, and the KD term joins the
// loss and its gradient.
#pragma once

#include "model/module.h"
#include "model/tensor_parallel.h"

namespace moex::model {

// The teacher's side of the KD term weight * tau^2 * KL(teacher || student).
struct SoftTargets {
  Tensor hidden;  // [N, d_teacher] the teacher's final-normed hidden states, compute dtype
  Tensor head;    // [V, d_teacher] the teacher's LM head weight, compute dtype, same device
  double temperature = 1.0;
  double weight = 0.0;  // alpha
};

struct HeadLoss {
  double loss_sum = 0;  // cross-entropy over counted rows
  double kd_sum = 0;    // tau^2 * KL over counted rows (0 without soft targets)
  int64_t count = 0;    // rows whose target is not ignored
};

// hidden [N, d] (after the final norm), head [V, d], targets i32 [N] on the host (-100 ignored).
// With dhidden defined: dhidden [N, d] = d(loss_scale * objective)/d hidden (written) and
// head.g += d(loss_scale * objective)/d head (written over it when it holds nothing of this step,
// Param::grad_accumulates), where objective = mean CE (+ weight * mean tau^2 KL with soft
// targets), both means over the counted rows.
// Under tensor parallelism head holds this rank's rows [rank * V/tp, (rank + 1) * V/tp) of the
// vocabulary: the cross-entropy combines every rank's row statistics (vocabulary-parallel, no
// rank holds the full logits) and dhidden is summed over the group. The teacher (soft) is whole on
// every rank: its head [V, d_teacher] is sliced to this rank's rows, and the KD term combines the
// ranks' row statistics as the cross-entropy does.
HeadLoss lm_head_loss(const Tensor& hidden, const Param& head, const Tensor& targets,
                      double loss_scale, const Tensor& dhidden, Arena& arena,
                      const SoftTargets* soft = nullptr, const TensorParallel& tp = {});

}  // namespace moex::model
