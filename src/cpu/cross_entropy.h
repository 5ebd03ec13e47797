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

}  // namespace moex::cpu
