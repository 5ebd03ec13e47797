// Cross-entropy over rows of fp32 logits [rows, vocab] (one chunk of the LM head's output), fused
// with its gradient. Twin: cpu/cross_entropy.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moex::cuda {

// loss_rows[i] = logsumexp(logits[i]) - logits[i, targets[i]] (fp32), 0 where
// targets[i] == ignore_index. When dlogits (bf16 [rows, vocab]) is not null it is written:
// grad_scale * (softmax(logits[i]) - onehot(targets[i])), 0 on ignored rows.
// Targets outside [0, vocab) other than ignore_index must be rejected by the caller.
void cross_entropy_rows(const float* logits, const int32_t* targets, int64_t rows, int64_t vocab,
                        int32_t ignore_index, float grad_scale, float* loss_rows, void* dlogits,
                        cudaStream_t stream);

}  // namespace moex::cuda
