// Mean cross-entropy from logits (the LM head's loss), fused with its gradient.
#pragma once

#include <cstdint>

namespace moex::cpu {

constexpr int32_t kIgnoreIndex = -100;  // torch.nn.CrossEntropyLoss default

// Returns loss = mean over counted rows of (logsumexp(logits[i]) - logits[i, targets[i]]), where a
// row counts unless targets[i] == ignore_index. With no counted row the loss is 0 and dlogits is 0
// (torch returns NaN there; a fully padded micro-batch should not poison the step).
// If dlogits is not null it is written: dloss * (softmax(logits[i]) - onehot(targets[i])) / count
// on counted rows, 0 on ignored rows. dlogits may alias logits.
template <typename T>
T cross_entropy_forward_backward(const T* logits,         // [num_rows, vocab_size]
                                 const int32_t* targets,  // [num_rows]
                                 int64_t num_rows, int64_t vocab_size, int32_t ignore_index,
                                 T dloss,      // upstream gradient of the returned loss
                                 T* dlogits);  // [num_rows, vocab_size] or null

// Vocabulary-parallel pieces (tensor parallelism): each row's vocab_size logits are columns
// [vocab_begin, vocab_begin + vocab_size) of the full vocabulary, whose other columns are on other
// ranks. Rows whose target is ignore_index are skipped (stats 0, gradient 0).
// stats [num_rows, 3]: the row's max, the sum of exp(logit - max), and the target's logit when
// the target is one of these columns (else 0).
void cross_entropy_partial_stats(const float* logits, const int32_t* targets, int64_t num_rows,
                                 int64_t vocab_size, int64_t vocab_begin, int32_t ignore_index,
                                 float* stats);
// dlogits = scale * (exp(logits - lse[i]) - onehot(target - vocab_begin)), where lse [num_rows] is
// the full row's logsumexp. dlogits may alias logits.
void cross_entropy_partial_grad(const float* logits, const int32_t* targets, const float* lse,
                                int64_t num_rows, int64_t vocab_size, int64_t vocab_begin,
                                int32_t ignore_index, float scale, float* dlogits);

}  // namespace moex::cpu
