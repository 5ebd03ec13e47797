// Cross-entropy of rows of fp32 logits [n, V] against targets, fused with its gradient: one chunk
// of the LM head's output at a time (model/lm_head.h), so the full [N, V] logits never exist.
#pragma once

#include "core/tensor.h"

namespace moex::ops {

constexpr int32_t kIgnoreIndex = -100;  // torch.nn.CrossEntropyLoss default

// loss_rows[i] = logsumexp(logits[i]) - logits[i, targets[i]] (0 on ignored rows), f32 [n].
// When dlogits (compute dtype [n, V]; on the CPU it may alias logits) is defined it is written:
// grad_scale * (softmax(logits[i]) - onehot(targets[i])), 0 on ignored rows.
// targets: i32 [n] on the host, checked to be ignore_index or in [0, V).
void cross_entropy(const Tensor& logits, const Tensor& targets, float grad_scale,
                   const Tensor& loss_rows, const Tensor& dlogits);

}  // namespace moex::ops
