// Expert FFNs over the dispatch plan's buffer (docs/architecture.md §MoE layer, stages 6, 8, 9):
// permute rows in, run every expert's MLP with BLAS GEMMs, combine the weighted outputs back per
// token.
//
// Legend: T tokens, d hidden, F ffn, F1 = F (GELU) or 2F (SwiGLU: gate rows, then up rows),
// R = plan.num_rows() buffer rows (E*C padded, or sum(counts) packed).
//   x [T,d]  buf [R,d]  w1 [E,F1,d]  w2 [E,d,F]  h [R,F1]  a [R,F]  out [R,d]  gates [T,k]  y [T,d]
// Padding rows of h, a, out are never written or read; only the counts[e] rows of each expert are.
// a is the forward's only: backward recomputes it from h.
#pragma once

#include <cstdint>

#include "moe/dispatch_plan.h"
#include "moe/moe_config.h"

namespace moex::moe {

struct FfnShape {
  int64_t d = 0;
  int64_t ffn = 0;  // F
  ExpertActivation activation = ExpertActivation::kGelu;
  bool gelu_exact = false;
  int64_t first_rows() const { return activation == ExpertActivation::kSwiGLU ? 2 * ffn : ffn; }
};

// ---- one MLP over n rows (an expert, the PR-MoE residual MLP, a shared expert, a dense FFN) ----
// h [n,F1] = x w1^T;  a [n,F] = act(h);  out [n,d] = a w2^T     (w1 [F1,d], w2 [d,F])
template <typename T>
void ffn_forward(const FfnShape& shape, const T* x, int64_t n, const T* w1, const T* w2, T* h, T* a,
                 T* out);
// Elements of scratch ffn_backward needs for n rows.
int64_t ffn_workspace_elems(const FfnShape& shape, int64_t n);
// dx [n,d] = dx_beta * dx + dout . dW-chain;  dw1 [F1,d], dw2 [d,F] = beta_w * dw + (this batch's
// gradient). Needs h, not a: a = act(h) is recomputed in the activation gradient's loop (the
// forward's bits), so the forward's a need not outlive its down projection.
template <typename T>
void ffn_backward(const FfnShape& shape, const T* x, int64_t n, const T* w1, const T* w2,
                  const T* h, const T* dout, T* workspace, T* dx, T dx_beta, T* dw1, T* dw2,
                  T beta_w);

// ---- the expert buffer ----
// buf[row] = x[token of row]; padding rows are zeroed (what DeepSpeed's dispatch einsum leaves
// there).
template <typename T>
void moe_permute(const T* x, const DispatchPlan& plan, int64_t d, T* buf);
// dx [T,d] += sum over the token's kept routes of dbuf[row]: the scatter-add, one writer per token.
template <typename T>
void moe_permute_backward(const T* dbuf, const DispatchPlan& plan, int64_t d, T* dx);

// Every expert's MLP over its counts[e] rows; experts with no rows are skipped.
template <typename T>
void experts_forward(const FfnShape& shape, const DispatchPlan& plan, const T* buf, const T* w1,
                     const T* w2, T* h, T* a, T* out);
// Elements of scratch experts_backward needs (one share per OpenMP thread: experts may run in
// parallel).
int64_t experts_workspace_elems(const FfnShape& shape, const DispatchPlan& plan);
// dbuf [R,d] (counts rows written), dw1 [E,F1,d] and dw2 [E,d,F] overwritten (zero for empty
// experts).
template <typename T>
void experts_backward(const FfnShape& shape, const DispatchPlan& plan, const T* buf, const T* w1,
                      const T* w2, const T* h, const T* dout, T* workspace, T* dbuf, T* dw1,
                      T* dw2);

// y [T,d] = sum_j gates[t,j] * out[row(t,j)], dropped routes skipped (the un-permute, fused).
template <typename T>
void moe_combine(const T* out, const DispatchPlan& plan, const T* gates, int64_t d, T* y);
// dgates[t,j] = <dy_t, out[row]> (0 if dropped);  dout[row] = gates[t,j] * dy_t.
template <typename T>
void moe_combine_backward(const T* dy, const T* out, const DispatchPlan& plan, const T* gates,
                          int64_t d, T* dout, T* dgates);

}  // namespace moex::moe
