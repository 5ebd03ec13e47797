#include "moe/experts.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "cpu/activation.h"
#include "cpu/gemm.h"
#include "cpu/parallel.h"

namespace moex::moe {
namespace {

// Element count below which a parallel region costs more than it saves.
constexpr int64_t kParallelMin = 1 << 15;

template <typename T>
void activation_forward(const FfnShape& shape, const T* h, T* a, int64_t n) {
  if (shape.activation == ExpertActivation::kSwiGLU) {
    cpu::swiglu_forward<T>(h, a, n, shape.ffn);
  } else {
    cpu::gelu_forward<T>(h, a, n * shape.ffn, shape.gelu_exact);
  }
}

// dh = act'(h) da, and a = act(h) written over da in the same loop (each da element is read
// before it is overwritten): the forward's bits, so no layer keeps a for backward.
template <typename T>
void activation_backward(const FfnShape& shape, const T* h, T* da, T* dh, int64_t n) {
  if (shape.activation == ExpertActivation::kSwiGLU) {
    cpu::swiglu_backward<T>(h, da, dh, n, shape.ffn, da);
  } else {
    cpu::gelu_backward<T>(h, da, dh, n * shape.ffn, shape.gelu_exact, da);
  }
}

void check_shape(const FfnShape& shape, const char* op) {
  MOEX_CHECK(shape.d > 0, op, ": hidden size d must be > 0, got ", shape.d);
  MOEX_CHECK(shape.ffn > 0, op, ": ffn size must be > 0, got ", shape.ffn);
}

// Experts run one per thread (each GEMM single-threaded inside the parallel region) when the
// fp32 GEMM nests in OpenMP: one fork/join per pass instead of one per GEMM and activation, which
// matters most when the machine is shared and a spinning thread waits for a descheduled one.
template <typename T>
bool experts_in_parallel(const DispatchPlan& plan) {
  return cpu::gemm_nests_in_openmp<T>() && omp_get_max_threads() > 1 && plan.num_experts > 1 &&
         !omp_in_parallel();
}

// The team for the busy experts' pass: their products (`passes` of them per row and weight, 1
// forward, 2 backward) and weights, a thread per expert at most.
template <typename T>
int experts_team(const FfnShape& shape, const DispatchPlan& plan, int64_t num_busy, int passes) {
  if (!experts_in_parallel<T>(plan)) return 1;
  int64_t rows = 0;
  for (int64_t n : plan.counts) rows += n;
  const double weights = static_cast<double>(shape.first_rows() + shape.ffn) * shape.d;
  return cpu::threads_for(2.0 * passes * static_cast<double>(rows) * weights,
                          static_cast<double>(sizeof(T)) * weights * num_busy, num_busy);
}

// Experts with rows, largest first (the dynamic schedule then balances the threads).
std::vector<int64_t> busy_experts(const DispatchPlan& plan) {
  std::vector<int64_t> order;
  for (int64_t e = 0; e < plan.num_experts; ++e)
    if (plan.counts[e] > 0) order.push_back(e);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return plan.counts[a] > plan.counts[b]; });
  return order;
}

}  // namespace

template <typename T>
void ffn_forward(const FfnShape& shape, const T* x, int64_t n, const T* w1, const T* w2, T* h, T* a,
                 T* out) {
  check_shape(shape, "ffn_forward");
  if (n == 0) return;
  const int64_t d = shape.d, f = shape.ffn, f1 = shape.first_rows();
  cpu::gemm<T>(false, true, n, f1, d, T(1), x, w1, T(0), h);
  activation_forward(shape, h, a, n);
  cpu::gemm<T>(false, true, n, d, f, T(1), a, w2, T(0), out);
}

int64_t ffn_workspace_elems(const FfnShape& shape, int64_t n) {
  return n * (shape.ffn + shape.first_rows());
}

template <typename T>
void ffn_backward(const FfnShape& shape, const T* x, int64_t n, const T* w1, const T* w2,
                  const T* h, const T* dout, T* workspace, T* dx, T dx_beta, T* dw1, T* dw2,
                  T beta_w) {
  check_shape(shape, "ffn_backward");
  const int64_t d = shape.d, f = shape.ffn, f1 = shape.first_rows();
  if (n == 0) {
    if (beta_w == T(0)) {
      std::fill(dw1, dw1 + f1 * d, T(0));
      std::fill(dw2, dw2 + d * f, T(0));
    }
    return;
  }
  T* da = workspace;                                                // [n,F]
  T* dh = workspace + n * f;                                        // [n,F1]
  cpu::gemm<T>(false, false, n, f, d, T(1), dout, w2, T(0), da);    // da = dout w2
  activation_backward(shape, h, da, dh, n);                         // dh = act'(h) da; a in da
  cpu::gemm<T>(true, false, d, f, n, T(1), dout, da, beta_w, dw2);  // dw2 = dout^T a
  cpu::gemm<T>(true, false, f1, d, n, T(1), dh, x, beta_w, dw1);    // dw1 = dh^T x
  cpu::gemm<T>(false, false, n, d, f1, T(1), dh, w1, dx_beta, dx);  // dx = dh w1
}

template <typename T>
void moe_permute(const T* x, const DispatchPlan& plan, int64_t d, T* buf) {
  const int64_t rows = plan.num_rows();
  const int32_t k = plan.top_k;
#pragma omp parallel for if (rows * d >= kParallelMin)
  for (int64_t row = 0; row < rows; ++row) {
    const int32_t r = plan.gather[row];
    T* dst = buf + row * d;
    if (r < 0) {
      std::fill(dst, dst + d, T(0));
    } else {
      std::memcpy(dst, x + static_cast<int64_t>(r / k) * d, sizeof(T) * d);
    }
  }
}

template <typename T>
void moe_permute_backward(const T* dbuf, const DispatchPlan& plan, int64_t d, T* dx) {
  const int64_t num_tokens = plan.num_tokens;
  const int k = plan.top_k;
#pragma omp parallel for if (num_tokens * d >= kParallelMin)
  for (int64_t t = 0; t < num_tokens; ++t) {
    T* dxt = dx + t * d;
    for (int j = 0; j < k; ++j) {
      const int32_t row = plan.row[t * k + j];
      if (row < 0) continue;
      const T* src = dbuf + static_cast<int64_t>(row) * d;
      for (int64_t i = 0; i < d; ++i) dxt[i] += src[i];
    }
  }
}

template <typename T>
void experts_forward(const FfnShape& shape, const DispatchPlan& plan, const T* buf, const T* w1,
                     const T* w2, T* h, T* a, T* out) {
  check_shape(shape, "experts_forward");
  const int64_t d = shape.d, f = shape.ffn, f1 = shape.first_rows();
  const std::vector<int64_t> order = busy_experts(plan);
  const int64_t num_busy = static_cast<int64_t>(order.size());
  const int team = experts_team<T>(shape, plan, num_busy, 1);
#pragma omp parallel for schedule(dynamic, 1) num_threads(team) if (team > 1)
  for (int64_t i = 0; i < num_busy; ++i) {
    const int64_t e = order[i], n = plan.counts[e], begin = plan.offsets[e];
    ffn_forward<T>(shape, buf + begin * d, n, w1 + e * f1 * d, w2 + e * d * f, h + begin * f1,
                   a + begin * f, out + begin * d);
  }
}

int64_t experts_workspace_elems(const FfnShape& shape, const DispatchPlan& plan) {
  int64_t most = 0;
  for (int64_t n : plan.counts) most = std::max(most, n);
  return ffn_workspace_elems(shape, most) * std::max(1, omp_get_max_threads());
}

template <typename T>
void experts_backward(const FfnShape& shape, const DispatchPlan& plan, const T* buf, const T* w1,
                      const T* w2, const T* h, const T* dout, T* workspace, T* dbuf, T* dw1,
                      T* dw2) {
  check_shape(shape, "experts_backward");
  const int64_t d = shape.d, f = shape.ffn, f1 = shape.first_rows();
  int64_t most = 0;
  for (int64_t n : plan.counts) most = std::max(most, n);
  const int64_t per_thread = ffn_workspace_elems(shape, most);
  for (int64_t e = 0; e < plan.num_experts; ++e) {
    if (plan.counts[e] == 0) {  // an expert that saw no token gets a zero gradient
      std::fill(dw1 + e * f1 * d, dw1 + (e + 1) * f1 * d, T(0));
      std::fill(dw2 + e * d * f, dw2 + (e + 1) * d * f, T(0));
    }
  }
  const std::vector<int64_t> order = busy_experts(plan);
  const int64_t num_busy = static_cast<int64_t>(order.size());
  const int team = experts_team<T>(shape, plan, num_busy, 2);
#pragma omp parallel for schedule(dynamic, 1) num_threads(team) if (team > 1)
  for (int64_t i = 0; i < num_busy; ++i) {
    const int64_t e = order[i], n = plan.counts[e], begin = plan.offsets[e];
    T* ws = workspace + per_thread * omp_get_thread_num();
    ffn_backward<T>(shape, buf + begin * d, n, w1 + e * f1 * d, w2 + e * d * f, h + begin * f1,
                    dout + begin * d, ws, dbuf + begin * d, T(0), dw1 + e * f1 * d, dw2 + e * d * f,
                    T(0));
  }
}

template <typename T>
void moe_combine(const T* out, const DispatchPlan& plan, const T* gates, int64_t d, T* y) {
  const int64_t num_tokens = plan.num_tokens;
  const int k = plan.top_k;
#pragma omp parallel for if (num_tokens * d >= kParallelMin)
  for (int64_t t = 0; t < num_tokens; ++t) {
    T* yt = y + t * d;
    std::fill(yt, yt + d, T(0));
    for (int j = 0; j < k; ++j) {
      const int32_t row = plan.row[t * k + j];
      if (row < 0) continue;
      const T g = gates[t * k + j];
      const T* src = out + static_cast<int64_t>(row) * d;
      for (int64_t i = 0; i < d; ++i) yt[i] += g * src[i];
    }
  }
}

template <typename T>
void moe_combine_backward(const T* dy, const T* out, const DispatchPlan& plan, const T* gates,
                          int64_t d, T* dout, T* dgates) {
  const int64_t num_tokens = plan.num_tokens;
  const int k = plan.top_k;
#pragma omp parallel for if (num_tokens * d >= kParallelMin)
  for (int64_t t = 0; t < num_tokens; ++t) {
    const T* dyt = dy + t * d;
    for (int j = 0; j < k; ++j) {
      const int64_t r = t * k + j;
      const int32_t row = plan.row[r];
      if (row < 0) {
        dgates[r] = T(0);
        continue;
      }
      const T g = gates[r];
      const T* src = out + static_cast<int64_t>(row) * d;
      T* dst = dout + static_cast<int64_t>(row) * d;
      T dot = 0;
      for (int64_t i = 0; i < d; ++i) {
        dot += dyt[i] * src[i];
        dst[i] = g * dyt[i];
      }
      dgates[r] = dot;
    }
  }
}

#define MOEX_INSTANTIATE_EXPERTS(T)                                                               \
  template void ffn_forward<T>(const FfnShape&, const T*, int64_t, const T*, const T*, T*, T*,    \
                               T*);                                                               \
  template void ffn_backward<T>(const FfnShape&, const T*, int64_t, const T*, const T*, const T*, \
                                const T*, T*, T*, T, T*, T*, T);                                  \
  template void moe_permute<T>(const T*, const DispatchPlan&, int64_t, T*);                       \
  template void moe_permute_backward<T>(const T*, const DispatchPlan&, int64_t, T*);              \
  template void experts_forward<T>(const FfnShape&, const DispatchPlan&, const T*, const T*,      \
                                   const T*, T*, T*, T*);                                         \
  template void experts_backward<T>(const FfnShape&, const DispatchPlan&, const T*, const T*,     \
                                    const T*, const T*, const T*, T*, T*, T*, T*);                \
  template void moe_combine<T>(const T*, const DispatchPlan&, const T*, int64_t, T*);             \
  template void moe_combine_backward<T>(const T*, const T*, const DispatchPlan&, const T*,        \
                                        int64_t, T*, T*);
MOEX_INSTANTIATE_EXPERTS(float)
MOEX_INSTANTIATE_EXPERTS(double)
#undef MOEX_INSTANTIATE_EXPERTS

}  // namespace moex::moe
