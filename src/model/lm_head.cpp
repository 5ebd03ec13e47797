#include "model/lm_head.h"

#include <algorithm>

#include "ops/cross_entropy.h"
#include "ops/distill_loss.h"
#include "ops/elementwise.h"
#include "ops/linear.h"

namespace moex::model {

HeadLoss lm_head_loss(const Tensor& hidden, const Param& head, const Tensor& targets,
                      double loss_scale, const Tensor& dhidden, Arena& arena,
                      const SoftTargets* soft) {
  const int64_t n = hidden.dim(0), vocab = head.w.dim(0);
  if (soft)
    MOEX_CHECK(soft->hidden.dim(0) == n && soft->head.dim(0) == vocab &&
                   soft->hidden.dim(1) == soft->head.dim(1),
               "lm_head_loss: the teacher's hidden ", soft->hidden.shape().str(), " and head ",
               soft->head.shape().str(), " do not fit ", n, " rows of a ", vocab, "-token vocab");
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
    ops::cross_entropy(logits, chunk_targets, grad_scale, loss_rows.slice(r0, r0 + rows), dlogits);
    if (soft) {
      const Tensor teacher_logits = arena.alloc(Shape{rows, vocab}, DType::kF32);
      ops::linear(soft->hidden.slice(r0, r0 + rows), soft->head, Tensor(), teacher_logits);
      ops::distill_loss(
          logits, teacher_logits, chunk_targets, static_cast<float>(soft->temperature),
          static_cast<float>(per_row * soft->weight), kd_rows.slice(r0, r0 + rows), dlogits);
    }
    if (training)
      ops::linear_backward(dlogits, h, head.w, dhidden.slice(r0, r0 + rows), false, head.g,
                           Tensor());
  }
  result.loss_sum = ops::sum(loss_rows);
  if (soft) result.kd_sum = ops::sum(kd_rows);
  return result;
}

}  // namespace moex::model
