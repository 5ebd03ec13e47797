#include "cpu/attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "cpu/gemm.h"
#include "cpu/parallel.h"
#include "cpu/softmax.h"

namespace moex::cpu {
namespace {

// Two ways to spread the work over threads:
// - when gemm<T> can run inside an OpenMP team (oneDNN fp32) and there are at least as many
//   independent tasks as threads, one task per (batch, head) in forward and per (batch, kv head)
//   in backward, each running its GEMMs and softmax rows on its own thread: one fork per call;
// - otherwise heads run one after another, each GEMM uses all BLAS threads and the softmax rows
//   between them are split with OpenMP.
// Backward tasks are kv-head groups, so the query heads that share a kv head add into dk/dv in
// head order on one thread: no atomics, and the same inputs give the same bits on every run.

void check_attention(const char* op, const AttentionShape& s) {
  MOEX_CHECK(s.batch >= 0, op, ": batch must be >= 0, got ", s.batch);
  MOEX_CHECK(s.q_len >= 0, op, ": q_len must be >= 0, got ", s.q_len);
  MOEX_CHECK(s.kv_len >= 0, op, ": kv_len must be >= 0, got ", s.kv_len);
  MOEX_CHECK(s.num_heads > 0, op, ": num_heads must be > 0, got ", s.num_heads);
  MOEX_CHECK(s.num_kv_heads > 0, op, ": num_kv_heads must be > 0, got ", s.num_kv_heads);
  MOEX_CHECK(s.num_heads % s.num_kv_heads == 0, op, ": num_kv_heads (", s.num_kv_heads,
             ") must divide num_heads (", s.num_heads, ")");
  MOEX_CHECK(s.head_dim > 0, op, ": head_dim must be > 0, got ", s.head_dim);
  MOEX_CHECK(s.start_pos >= 0, op, ": start_pos must be >= 0, got ", s.start_pos);
  MOEX_CHECK(s.start_pos + s.q_len <= s.kv_len, op, ": start_pos + q_len (", s.start_pos, " + ",
             s.q_len, ") must be <= kv_len (", s.kv_len, ")");
  MOEX_CHECK(s.scale >= 0, op, ": scale must be >= 0 (0 = 1/sqrt(head_dim)), got ", s.scale);
}

template <typename T>
T softmax_scale(const AttentionShape& s) {
  return s.scale > 0 ? static_cast<T>(s.scale) : T(1) / std::sqrt(static_cast<T>(s.head_dim));
}

// Keys visible to query row i.
inline int64_t visible_keys(const AttentionShape& s, int64_t i) {
  return std::min(s.kv_len, s.start_pos + i + 1);
}

// One query head: probs_bh = softmax(scale * q_bh k_bg^T, causal), out_bh = probs_bh v_bg.
template <typename T>
void forward_head(const T* q, const T* k, const T* v, const AttentionShape& s, int64_t b, int64_t h,
                  T scale, bool split_rows, T* out, T* probs) {
  const int64_t H = s.num_heads, Hkv = s.num_kv_heads, Dh = s.head_dim;
  const int64_t Tq = s.q_len, Tk = s.kv_len, g = h / (H / Hkv);
  const T* q_bh = q + b * Tq * H * Dh + h * Dh;    // rows of stride H*Dh
  const T* k_bg = k + b * Tk * Hkv * Dh + g * Dh;  // rows of stride Hkv*Dh
  const T* v_bg = v + b * Tk * Hkv * Dh + g * Dh;
  T* p_bh = probs + (b * H + h) * Tq * Tk;  // [Tq, Tk]
  T* out_bh = out + b * Tq * H * Dh + h * Dh;
  gemm<T>(false, true, Tq, Tk, Dh, scale, q_bh, H * Dh, k_bg, Hkv * Dh, T(0), p_bh, Tk);
#pragma omp parallel for schedule(static) if (split_rows && Tq * Tk >= kMinParallelWork)
  for (int64_t i = 0; i < Tq; ++i) {
    T* row = p_bh + i * Tk;
    const int64_t n = visible_keys(s, i);
    softmax_row_inplace(row, n);
    std::fill(row + n, row + Tk, T(0));
  }
  gemm<T>(false, false, Tq, Dh, Tk, T(1), p_bh, Tk, v_bg, Hkv * Dh, T(0), out_bh, H * Dh);
}

// All query heads of kv head g: dq for each, dk/dv of g accumulated in head order.
// ds is [Tq, Tk] scratch.
template <typename T>
void backward_group(const T* dout, const T* q, const T* k, const T* v, const T* probs,
                    const AttentionShape& s, int64_t b, int64_t g, T scale, bool split_rows, T* dq,
                    T* dk, T* dv, T* ds) {
  const int64_t H = s.num_heads, Hkv = s.num_kv_heads, Dh = s.head_dim;
  const int64_t Tq = s.q_len, Tk = s.kv_len, group = H / Hkv;
  const T* k_bg = k + b * Tk * Hkv * Dh + g * Dh;
  const T* v_bg = v + b * Tk * Hkv * Dh + g * Dh;
  T* dk_bg = dk + b * Tk * Hkv * Dh + g * Dh;
  T* dv_bg = dv + b * Tk * Hkv * Dh + g * Dh;
  for (int64_t h = g * group; h < (g + 1) * group; ++h) {
    const T* q_bh = q + b * Tq * H * Dh + h * Dh;
    const T* do_bh = dout + b * Tq * H * Dh + h * Dh;
    const T* p_bh = probs + (b * H + h) * Tq * Tk;
    T* dq_bh = dq + b * Tq * H * Dh + h * Dh;
    // dV += P^T dO
    gemm<T>(true, false, Tk, Dh, Tq, T(1), p_bh, Tk, do_bh, H * Dh, T(1), dv_bg, Hkv * Dh);
    // dP = dO V^T
    gemm<T>(false, true, Tq, Tk, Dh, T(1), do_bh, H * Dh, v_bg, Hkv * Dh, T(0), ds, Tk);
    // dS = P * (dP - rowsum(P * dP)); masked entries have P = 0, so dS = 0 there.
#pragma omp parallel for schedule(static) if (split_rows && Tq * Tk >= kMinParallelWork)
    for (int64_t i = 0; i < Tq; ++i) {
      const T* pr = p_bh + i * Tk;
      T* dr = ds + i * Tk;
      const int64_t n = visible_keys(s, i);
      T dot = 0;
      for (int64_t j = 0; j < n; ++j) dot += pr[j] * dr[j];
      for (int64_t j = 0; j < n; ++j) dr[j] = pr[j] * (dr[j] - dot);
      std::fill(dr + n, dr + Tk, T(0));
    }
    // dQ = scale * dS K; dK += scale * dS^T Q
    gemm<T>(false, false, Tq, Dh, Tk, scale, ds, Tk, k_bg, Hkv * Dh, T(0), dq_bh, H * Dh);
    gemm<T>(true, false, Tk, Dh, Tq, scale, ds, Tk, q_bh, H * Dh, T(1), dk_bg, Hkv * Dh);
  }
}

}  // namespace

template <typename T>
void attention_forward(const T* q, const T* k, const T* v, const AttentionShape& s, T* out,
                       T* probs) {
  check_attention("attention_forward", s);
  if (s.batch == 0 || s.q_len == 0) return;
  MOEX_CHECK(q && k && v, "attention_forward: q, k or v is null");
  MOEX_CHECK(out != nullptr, "attention_forward: out is null");
  MOEX_CHECK(probs != nullptr, "attention_forward: probs is null");
  const T scale = softmax_scale<T>(s);
  const int64_t num_tasks = s.batch * s.num_heads;
  const int num_threads = omp_get_max_threads();
  if (gemm_nests_in_openmp<T>() && num_threads > 1 && num_tasks >= num_threads) {
#pragma omp parallel for schedule(static)
    for (int64_t task = 0; task < num_tasks; ++task) {
      forward_head(q, k, v, s, task / s.num_heads, task % s.num_heads, scale, false, out, probs);
    }
  } else {
    for (int64_t task = 0; task < num_tasks; ++task) {
      forward_head(q, k, v, s, task / s.num_heads, task % s.num_heads, scale, true, out, probs);
    }
  }
}

size_t attention_backward_workspace_elems(const AttentionShape& s) {
  check_attention("attention_backward_workspace_elems", s);
  // One [q_len, kv_len] scratch per thread that may run a kv-head group at the same time.
  const int64_t slots =
      std::max<int64_t>(1, std::min<int64_t>(s.batch * s.num_kv_heads, omp_get_max_threads()));
  return static_cast<size_t>(s.q_len * s.kv_len * slots);
}

template <typename T>
void attention_backward(const T* dout, const T* q, const T* k, const T* v, const T* probs,
                        const AttentionShape& s, T* dq, T* dk, T* dv, T* workspace,
                        size_t workspace_elems) {
  check_attention("attention_backward", s);
  const int64_t Hkv = s.num_kv_heads, Dh = s.head_dim, Tq = s.q_len, Tk = s.kv_len;
  if (s.batch == 0) return;
  MOEX_CHECK(dk && dv, "attention_backward: dk or dv is null");
  if (Tq > 0) {
    MOEX_CHECK(dout && q && k && v, "attention_backward: dout, q, k or v is null");
    MOEX_CHECK(probs != nullptr, "attention_backward: probs is null");
    MOEX_CHECK(dq != nullptr, "attention_backward: dq is null");
    MOEX_CHECK(workspace != nullptr, "attention_backward: workspace is null");
    // At least one [q_len, kv_len] slot; more slots let more kv-head groups run at once.
    MOEX_CHECK(workspace_elems >= static_cast<size_t>(Tq * Tk),
               "attention_backward: workspace_elems (", workspace_elems,
               ") is below q_len * kv_len = ", Tq * Tk,
               " (ask attention_backward_workspace_elems)");
  }
  std::fill(dk, dk + s.batch * Tk * Hkv * Dh, T(0));
  std::fill(dv, dv + s.batch * Tk * Hkv * Dh, T(0));
  if (Tq == 0) return;
  const T scale = softmax_scale<T>(s);
  const int64_t num_tasks = s.batch * Hkv;
  const int64_t slots = static_cast<int64_t>(workspace_elems / static_cast<size_t>(Tq * Tk));
  const int num_threads = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), slots));
  if (gemm_nests_in_openmp<T>() && num_threads > 1 && num_tasks >= num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int64_t task = 0; task < num_tasks; ++task) {
      T* ds = workspace + static_cast<int64_t>(omp_get_thread_num()) * Tq * Tk;
      backward_group(dout, q, k, v, probs, s, task / Hkv, task % Hkv, scale, false, dq, dk, dv, ds);
    }
  } else {
    for (int64_t task = 0; task < num_tasks; ++task) {
      backward_group(dout, q, k, v, probs, s, task / Hkv, task % Hkv, scale, true, dq, dk, dv,
                     workspace);
    }
  }
}

#define MOEX_INSTANTIATE_ATTENTION(T)                                                              \
  template void attention_forward<T>(const T*, const T*, const T*, const AttentionShape&, T*, T*); \
  template void attention_backward<T>(const T*, const T*, const T*, const T*, const T*,            \
                                      const AttentionShape&, T*, T*, T*, T*, size_t);
MOEX_INSTANTIATE_ATTENTION(float)
MOEX_INSTANTIATE_ATTENTION(double)
#undef MOEX_INSTANTIATE_ATTENTION

}  // namespace moex::cpu
