// Knowledge-distillation loss over rows of fp32 student and teacher logits [rows, vocab] (one
// chunk of the LM head's output), fused with its gradient. Twin: cpu/distill_loss.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moex::cuda {

// loss_rows[i] = tau^2 * KL(softmax(teacher[i]/tau) || softmax(student[i]/tau)) (fp32), 0 where
// targets[i] == ignore_index. When dstudent (bf16 [rows, vocab], not aliasing the logits) is not
// null, grad_scale * tau * (softmax(student[i]/tau) - softmax(teacher[i]/tau)) is added to it on
// counted rows. With lse (f64 [rows, 2], device) not null the columns are a slice of the
// vocabulary (tensor parallelism): the softmaxes take the whole rows' log-sum-exps of student/tau
// and teacher/tau from it, and loss_rows gets these columns' terms of the KL sum.
void distill_loss_rows(const float* student, const float* teacher, const int32_t* targets,
                       int64_t rows, int64_t vocab, int32_t ignore_index, float temperature,
                       float grad_scale, const double* lse, float* loss_rows, void* dstudent,
                       cudaStream_t stream);

// stats [rows, 4] f32: per row the max of student/tau over these columns, the sum of
// exp(student/tau - max), then the same two of the teacher.
void distill_stats_rows(const float* student, const float* teacher, int64_t rows, int64_t vocab,
                        float temperature, float* stats, cudaStream_t stream);

}  // namespace moex::cuda
