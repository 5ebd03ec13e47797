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

// Tensor parallelism's vocabulary-parallel pieces (twins: cpu/cross_entropy.h). logits [rows,
// vocab] are columns [vocab_begin, vocab_begin + vocab) of the whole vocabulary; targets index
// the whole vocabulary. stats [rows, 3] = (max, sum of exp(x - max), the target's logit when this
// part holds it, else 0), zeros on ignored rows.
void cross_entropy_partial_stats(const float* logits, const int32_t* targets, int64_t rows,
                                 int64_t vocab, int64_t vocab_begin, int32_t ignore_index,
                                 float* stats, cudaStream_t stream);
// dlogits (bf16 [rows, vocab]) = grad_scale * (exp(logits - lse[i]) - onehot(target)), lse being
// the whole row's logsumexp; zeros on ignored rows.
void cross_entropy_partial_grad(const float* logits, const int32_t* targets, const float* lse,
                                int64_t rows, int64_t vocab, int64_t vocab_begin,
                                int32_t ignore_index, float grad_scale, void* dlogits,
                                cudaStream_t stream);

}  // namespace moex::cuda
