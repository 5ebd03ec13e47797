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

// Vocabulary-parallel cross-entropy (tensor parallelism, docs/parallelism.md): logits [n, Vl] f32
// hold columns [vocab_begin, vocab_begin + Vl) of the full vocabulary; the caller combines the
// ranks' stats into each row's logsumexp. targets as above, checked against the full vocab_size.
// stats [n, 3] f32: per row the local max, the sum of exp(logit - max), and the target's logit
// when it is a local column (else 0); ignored rows 0.
void cross_entropy_partial_stats(const Tensor& logits, const Tensor& targets, int64_t vocab_begin,
                                 int64_t vocab_size, const Tensor& stats);
// dlogits (the compute dtype: f32 on the CPU, where it may alias logits; bf16 on a GPU) =
// grad_scale * (exp(logits - lse) - onehot(target)) on these columns, 0 on ignored rows; lse [n]
// f32: each full row's logsumexp.
void cross_entropy_partial_grad(const Tensor& logits, const Tensor& targets, int64_t vocab_begin,
                                const Tensor& lse, float grad_scale, const Tensor& dlogits);

}  // namespace moex::ops
