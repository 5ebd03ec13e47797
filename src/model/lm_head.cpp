#include "model/lm_head.h"

#include <algorithm>
#include <cmath>

#include "ops/cross_entropy.h"
#include "ops/distill_loss.h"
#include "ops/elementwise.h"
#include "ops/linear.h"

namespace moex::model {
namespace {

// The log-sum-exp of a row split over `parts` ranks, from each part's (max, sum of exp(x - max))
// = stat(p, 0), stat(p, 1), merged in part order (the same on every rank).
template <typename Stat>
double merged_log_sum_exp(int64_t parts, Stat stat) {
  double mx = stat(0, 0);
  for (int64_t p = 1; p < parts; ++p) mx = std::max(mx, stat(p, 0));
  double sum = 0;
  for (int64_t p = 0; p < parts; ++p) sum += stat(p, 1) * std::exp(stat(p, 0) - mx);
  return mx + std::log(sum);
}

// ops::cross_entropy over a vocabulary split across the tp group: logits [rows, Vl] are this
// rank's columns. Every rank gathers every rank's (max, sum of exponentials, target logit) per
// row and combines them in rank order, so all ranks get the same losses. The combination runs on
// the host (on a GPU the gathered statistics come down and the results go up: one wait a chunk).
void vocab_parallel_cross_entropy(const Tensor& logits, const Tensor& targets, float grad_scale,
                                  const Tensor& loss_rows, const Tensor& dlogits,
                                  const TensorParallel& tp, Arena& arena) {
  const int64_t rows = logits.dim(0), vl = logits.dim(1), parts = tp.size();
  const bool host = logits.device().is_cpu();
  ArenaScope scope(arena);
  const Tensor stats = arena.alloc(Shape{rows, 3}, DType::kF32);
  const Tensor all = arena.alloc(Shape{parts, rows, 3}, DType::kF32);
  const Tensor lse = arena.alloc(Shape{rows}, DType::kF32);
  ops::cross_entropy_partial_stats(logits, targets, tp.rank() * vl, parts * vl, stats);
  tp.all_gather(stats, all);
  const Tensor all_host = host ? all : all.to(Device::cpu());
  const Tensor loss_host = host ? loss_rows : Tensor::empty(Shape{rows}, DType::kF32);
  const Tensor lse_host = host ? lse : Tensor::empty(Shape{rows}, DType::kF32);
  const float* s = all_host.data<float>();
  const int32_t* t = targets.data<int32_t>();
  float* loss = loss_host.data<float>();
  float* l = lse_host.data<float>();
  for (int64_t i = 0; i < rows; ++i) {
    loss[i] = l[i] = 0.0f;
    if (t[i] == ops::kIgnoreIndex) continue;
    l[i] = static_cast<float>(merged_log_sum_exp(
        parts, [&](int64_t p, int j) { return static_cast<double>(s[(p * rows + i) * 3 + j]); }));
    double target_logit = 0;  // only the owner's part is not 0
    for (int64_t p = 0; p < parts; ++p) target_logit += s[(p * rows + i) * 3 + 2];
    loss[i] = static_cast<float>(l[i] - target_logit);
  }
  if (!host) {
    ops::copy(loss_host, loss_rows);
    ops::copy(lse_host, lse);
  }
  if (dlogits.defined())
    ops::cross_entropy_partial_grad(logits, targets, tp.rank() * vl, lse, grad_scale, dlogits);
}

// ops::distill_loss over a vocabulary split across the tp group: student and teacher logits
// [rows, Vl] are this rank's columns. Every rank gathers every rank's (max, sum of exponentials)
// of both rows and combines them in rank order into the rows' log-sum-exps (on the host, in
// double); each rank then forms its columns' terms of the KL and of the gradient, and the terms
// are summed over the group.
void vocab_parallel_distill(const Tensor& student, const Tensor& teacher, const Tensor& targets,
                            float temperature, float grad_scale, const Tensor& loss_rows,
                            const Tensor& dstudent, const TensorParallel& tp, Arena& arena) {
  const int64_t rows = student.dim(0), parts = tp.size();
  const bool host = student.device().is_cpu();
  ArenaScope scope(arena);
  const Tensor stats = arena.alloc(Shape{rows, 4}, DType::kF32);
  const Tensor all = arena.alloc(Shape{parts, rows, 4}, DType::kF32);
  ops::distill_partial_stats(student, teacher, temperature, stats);
  tp.all_gather(stats, all);
  const Tensor all_host = host ? all : all.to(Device::cpu());
  const Tensor lse_host = Tensor::empty(Shape{rows, 2}, DType::kF64);
  const float* s = all_host.data<float>();
  double* lse = lse_host.data<double>();
  for (int64_t i = 0; i < rows; ++i)
    for (int side = 0; side < 2; ++side)  // student, teacher
      lse[2 * i + side] = merged_log_sum_exp(parts, [&](int64_t p, int j) {
        return static_cast<double>(s[(p * rows + i) * 4 + 2 * side + j]);
      });
  ops::distill_partial_loss(student, teacher, targets, temperature,
                            host ? lse_host : lse_host.to(student.device()), grad_scale, loss_rows,
                            dstudent);
  tp.all_reduce(loss_rows);  // each rank's columns' share of the KL
}

}  // namespace

HeadLoss lm_head_loss(const Tensor& hidden, const Param& head, const Tensor& targets,
                      double loss_scale, const Tensor& dhidden, Arena& arena,
                      const SoftTargets* soft, const TensorParallel& tp) {
  // vocab: this rank's rows of the head (all of them without tensor parallelism).
  const int64_t n = hidden.dim(0), vocab = head.w.dim(0);
  // The teacher's head: whole, or this rank's rows of it (a teacher split like the student).
  const bool teacher_split = soft && tp.active() && soft->head.dim(0) == vocab;
  if (soft)
    MOEX_CHECK(soft->hidden.dim(0) == n &&
                   (teacher_split || soft->head.dim(0) == vocab * tp.size()) &&
                   soft->hidden.dim(1) == soft->head.dim(1),
               "lm_head_loss: the teacher's hidden ", soft->hidden.shape().str(), " and head ",
               soft->head.shape().str(), " do not fit ", n, " rows of a ", vocab * tp.size(),
               "-token vocab");
  HeadLoss result;
  const int32_t* t = targets.data<int32_t>();
  for (int64_t i = 0; i < n; ++i) result.count += t[i] != ops::kIgnoreIndex;
  const double per_row = result.count > 0 ? loss_scale / static_cast<double>(result.count) : 0.0;
  const float grad_scale = static_cast<float>(per_row);
  const bool training = dhidden.defined();
  // On the CPU the CE gradient overwrites the logits in place; the KD term still reads them, so
  // with soft targets the gradient gets its own buffer (bf16 on the GPU has one anyway).
  const bool separate_grad = hidden.dtype() != DType::kF32 || soft != nullptr;
  // Rows per chunk: at most 256 MiB of [rows, V] buffers (student logits, and with soft targets
  // the teacher's logits and the separate gradient).
  const int64_t row_buffers = soft ? 3 : 1;
  const int64_t chunk = std::clamp<int64_t>((int64_t{256} << 20) / (vocab * 4 * row_buffers), 1, n);
  ArenaScope scope(arena);
  const Tensor loss_rows = arena.alloc(Shape{n}, DType::kF32);
  const Tensor kd_rows = soft ? arena.alloc(Shape{n}, DType::kF32) : Tensor();
  for (int64_t r0 = 0; r0 < n; r0 += chunk) {
    ArenaScope chunk_scope(arena);
    const int64_t rows = std::min(chunk, n - r0);
    const Tensor logits = arena.alloc(Shape{rows, vocab}, DType::kF32);
    const Tensor dlogits = !training       ? Tensor()
                           : separate_grad ? arena.alloc(Shape{rows, vocab}, hidden.dtype())
                                           : logits;
    const Tensor h = hidden.slice(r0, r0 + rows);
    const Tensor chunk_targets = targets.slice(r0, r0 + rows);
    ops::linear(h, head.w, Tensor(), logits);
    if (tp.active())
      vocab_parallel_cross_entropy(logits, chunk_targets, grad_scale,
                                   loss_rows.slice(r0, r0 + rows), dlogits, tp, arena);
    else
      ops::cross_entropy(logits, chunk_targets, grad_scale, loss_rows.slice(r0, r0 + rows),
                         dlogits);
    if (soft) {
      const Tensor teacher_logits = arena.alloc(Shape{rows, vocab}, DType::kF32);
      // The teacher's logits of this rank's vocabulary rows.
      const Tensor teacher_head = tp.active() && !teacher_split
                                      ? soft->head.slice(tp.rank() * vocab, (tp.rank() + 1) * vocab)
                                      : soft->head;
      ops::linear(soft->hidden.slice(r0, r0 + rows), teacher_head, Tensor(), teacher_logits);
      const float tau = static_cast<float>(soft->temperature);
      const float kd_scale = static_cast<float>(per_row * soft->weight);
      const Tensor kd_chunk = kd_rows.slice(r0, r0 + rows);
      if (tp.active())
        vocab_parallel_distill(logits, teacher_logits, chunk_targets, tau, kd_scale, kd_chunk,
                               dlogits, tp, arena);
      else
        ops::distill_loss(logits, teacher_logits, chunk_targets, tau, kd_scale, kd_chunk, dlogits);
    }
    if (training)  // the first chunk may overwrite the gradient, the others add to it
      ops::linear_backward(dlogits, h, head.w, dhidden.slice(r0, r0 + rows), false, head.g,
                           r0 > 0 || head.grad_accumulates(), Tensor());
  }
  if (training) tp.all_reduce(dhidden);  // each rank's vocabulary rows add their part
  result.loss_sum = ops::sum(loss_rows);
  if (soft) result.kd_sum = ops::sum(kd_rows);
  return result;
}

}  // namespace moex::model
