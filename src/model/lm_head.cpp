#include "model/lm_head.h"

#include <algorithm>

#include "ops/cross_entropy.h"
#include "ops/elementwise.h"
#include "ops/linear.h"

namespace moex::model {

HeadLoss lm_head_loss(const Tensor& hidden, const Param& head, const Tensor& targets,
                      double loss_scale, const Tensor& dhidden, Arena& arena) {
  const int64_t n = hidden.dim(0), vocab = head.w.dim(0);
  HeadLoss result;
  const int32_t* t = targets.data<int32_t>();
  for (int64_t i = 0; i < n; ++i) result.count += t[i] != ops::kIgnoreIndex;
  const float grad_scale =
      result.count > 0 ? static_cast<float>(loss_scale / static_cast<double>(result.count)) : 0.0f;
  // Rows per chunk: fp32 logits of at most 256 MiB.
  const int64_t chunk = std::clamp<int64_t>((int64_t{256} << 20) / (vocab * 4), 1, n);
  ArenaScope scope(arena);
  const Tensor loss_rows = arena.alloc(Shape{n}, DType::kF32);
  const bool training = dhidden.defined();
  const bool separate_grad = hidden.dtype() != DType::kF32;  // bf16 gradient beside fp32 logits
  for (int64_t r0 = 0; r0 < n; r0 += chunk) {
    ArenaScope chunk_scope(arena);
    const int64_t rows = std::min(chunk, n - r0);
    const Tensor logits = arena.alloc(Shape{rows, vocab}, DType::kF32);
    const Tensor dlogits = !training ? Tensor()
                           : separate_grad ? arena.alloc(Shape{rows, vocab}, hidden.dtype())
                                           : logits;
    const Tensor h = hidden.slice(r0, r0 + rows);
    ops::linear(h, head.w, Tensor(), logits);
    ops::cross_entropy(logits, targets.slice(r0, r0 + rows), grad_scale,
                       loss_rows.slice(r0, r0 + rows), dlogits);
    if (training)
      ops::linear_backward(dlogits, h, head.w, dhidden.slice(r0, r0 + rows), false, head.g,
                           Tensor());
  }
  result.loss_sum = ops::sum(loss_rows);
  return result;
}

}  // namespace moex::model
