// Knowledge-distillation loss over rows of fp32 student and teacher logits [rows, vocab] (one
// chunk of the LM head's output), fused with its gradient. Twin: cpu/distill_loss.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moex::cuda {

// loss_rows[i] = tau^2 * KL(softmax(teacher[i]/tau) || softmax(student[i]/tau)) (fp32), 0 where
// targets[i] == ignore_index. When dstudent (bf16 [rows, vocab], not aliasing the logits) is not
// null, grad_scale * tau * (softmax(student[i]/tau) - softmax(teacher[i]/tau)) is added to it on
// counted rows.
void distill_loss_rows(const float* student, const float* teacher, const int32_t* targets,
                       int64_t rows, int64_t vocab, int32_t ignore_index, float temperature,
                       float grad_scale, float* loss_rows, void* dstudent, cudaStream_t stream);

}  // namespace moex::cuda
