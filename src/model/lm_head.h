// The LM head and its cross-entropy, chunked over rows: each chunk's fp32 logits [rows, V] are
// made, turned into losses and (when training) into the gradient of the hidden states and of the
// head weight at once, then dropped, so the full [N, V] logits and their gradient never exist.
#pragma once

#include "model/module.h"

namespace moex::model {

struct HeadLoss {
  double loss_sum = 0;  // over counted rows
  int64_t count = 0;    // rows whose target is not ignored
};

// hidden [N, d] (after the final norm), head [V, d], targets i32 [N] on the host (-100 ignored).
// With dhidden defined: dhidden [N, d] = d(loss_scale * mean CE)/d hidden (written) and
// head.g += d(loss_scale * mean CE)/d head.
HeadLoss lm_head_loss(const Tensor& hidden, const Param& head, const Tensor& targets,
                      double loss_scale, const Tensor& dhidden, Arena& arena);

}  // namespace moex::model
