#include "moe/router.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/error.h"
#include "cpu/gemm.h"

namespace moex::moe {
namespace {

// DeepSpeed clamps the renormalization denominator at torch.finfo(float32).eps.
constexpr double kRenormEps = std::numeric_limits<float>::epsilon();

void check_router_sizes(int64_t num_tokens, int64_t num_experts, const char* op) {
  MOEX_CHECK(num_tokens >= 0, op, ": num_tokens must be >= 0, got ", num_tokens);
  MOEX_CHECK(num_experts > 0, op, ": num_experts must be > 0, got ", num_experts);
}

// Which routes the renormalization sums over, and which routes carry a weight at all.
inline bool route_kept(const int32_t* slot, int64_t r) {
  return slot == nullptr || slot[r] >= 0;
}

}  // namespace

template <typename T>
void router_jitter(const T* x, int64_t num_tokens, int64_t d, float eps, uint64_t seed,
                   uint64_t offset, T* u, T* xj) {
  MOEX_CHECK(eps >= 0 && eps < 1, "router_jitter: eps must be in [0, 1), got ", eps);
  const uint64_t stream = moe_rng_offset(offset, MoERngUse::kJitter);
  const int64_t n = num_tokens * d;
#pragma omp parallel for if (n >= (1 << 16))
  for (int64_t i = 0; i < n; ++i) {
    const T draw = static_cast<T>(philox_uniform(seed, stream, static_cast<uint64_t>(i)));
    u[i] = T(1) - static_cast<T>(eps) + T(2) * static_cast<T>(eps) * draw;
    xj[i] = x[i] * u[i];
  }
}

template <typename T>
void router_logits(const T* xj, const T* wg, int64_t num_tokens, int64_t d, int64_t num_experts,
                   T* z) {
  check_router_sizes(num_tokens, num_experts, "router_logits");
  cpu::gemm<T>(false, true, num_tokens, num_experts, d, T(1), xj, wg, T(0), z);
}

template <typename T>
void router_scores(const T* z, int64_t num_tokens, int64_t num_experts, ScoreFunc score_func,
                   T* s) {
  check_router_sizes(num_tokens, num_experts, "router_scores");
  for (int64_t t = 0; t < num_tokens; ++t) {
    const T* zt = z + t * num_experts;
    T* st = s + t * num_experts;
    if (score_func == ScoreFunc::kSigmoid) {
      for (int64_t e = 0; e < num_experts; ++e) st[e] = T(1) / (T(1) + std::exp(-zt[e]));
      continue;
    }
    const T m = *std::max_element(zt, zt + num_experts);
    T sum = 0;
    for (int64_t e = 0; e < num_experts; ++e) sum += (st[e] = std::exp(zt[e] - m));
    for (int64_t e = 0; e < num_experts; ++e) st[e] /= sum;
  }
}

template <typename T>
void router_select(const T* z, const T* s, const T* bias, int64_t num_tokens, int64_t num_experts,
                   const RouterSelectParams& params, int32_t* topk_idx) {
  check_router_sizes(num_tokens, num_experts, "router_select");
  const int k = params.top_k;
  MOEX_CHECK(k >= 1 && k <= num_experts, "router_select: top_k must be in [1, E=", num_experts,
             "], got ", k);
  MOEX_CHECK(!params.rsample || k == 1, "router_select: rsample needs top_k == 1");
  MOEX_CHECK(!params.gumbel_second_expert || k == 2,
             "router_select: gumbel_second_expert needs top_k == 2");
  const uint64_t gumbel_stream = moe_rng_offset(params.offset, MoERngUse::kGumbel);
  auto gumbel = [&](int64_t t, int64_t e) {
    return static_cast<double>(
        philox_gumbel(params.seed, gumbel_stream, static_cast<uint64_t>(t * num_experts + e)));
  };
  std::vector<double> key(num_experts);
  for (int64_t t = 0; t < num_tokens; ++t) {
    const T* zt = z + t * num_experts;
    const T* st = s + t * num_experts;
    int32_t* out = topk_idx + t * k;
    for (int64_t e = 0; e < num_experts; ++e) {
      key[e] = static_cast<double>(st[e]);
      if (params.rsample) key[e] = static_cast<double>(zt[e]) + gumbel(t, e);
      if (bias != nullptr) key[e] += static_cast<double>(bias[e]);
    }
    for (int j = 0; j < k; ++j) {
      if (j == 1 && params.gumbel_second_expert) {
        // DeepSpeed top2gating: logits + Gumbel, the first choice masked out.
        for (int64_t e = 0; e < num_experts; ++e)
          key[e] = static_cast<double>(zt[e]) + gumbel(t, e);
      }
      int32_t best = -1;
      for (int64_t e = 0; e < num_experts; ++e) {
        bool taken = false;
        for (int i = 0; i < j; ++i) taken |= out[i] == e;
        if (!taken && (best < 0 || key[e] > key[best])) best = static_cast<int32_t>(e);
      }
      out[j] = best;
    }
  }
}

template <typename T>
void router_gates(const T* s, const int32_t* topk_idx, const int32_t* slot, int64_t num_tokens,
                  int64_t num_experts, int top_k, const RouterGateParams& params, T* gates) {
  check_router_sizes(num_tokens, num_experts, "router_gates");
  for (int64_t t = 0; t < num_tokens; ++t) {
    const T* st = s + t * num_experts;
    double sum = 0;
    for (int j = 0; j < top_k; ++j) {
      const int64_t r = t * top_k + j;
      if (!params.after_drop || route_kept(slot, r)) sum += static_cast<double>(st[topk_idx[r]]);
    }
    const T denom = params.renormalize ? static_cast<T>(std::max(sum, kRenormEps)) : T(1);
    for (int j = 0; j < top_k; ++j) {
      const int64_t r = t * top_k + j;
      gates[r] = route_kept(slot, r) ? st[topk_idx[r]] / denom : T(0);
    }
  }
}

template <typename T>
void router_gates_backward(const T* s, const int32_t* topk_idx, const int32_t* slot,
                           const T* dgates, int64_t num_tokens, int64_t num_experts, int top_k,
                           const RouterGateParams& params, T* ds) {
  check_router_sizes(num_tokens, num_experts, "router_gates_backward");
  for (int64_t t = 0; t < num_tokens; ++t) {
    const T* st = s + t * num_experts;
    T* dst = ds + t * num_experts;
    if (!params.renormalize) {
      for (int j = 0; j < top_k; ++j) {
        const int64_t r = t * top_k + j;
        if (route_kept(slot, r)) dst[topk_idx[r]] += dgates[r];
      }
      continue;
    }
    double sum = 0;
    for (int j = 0; j < top_k; ++j) {
      const int64_t r = t * top_k + j;
      if (!params.after_drop || route_kept(slot, r)) sum += static_cast<double>(st[topk_idx[r]]);
    }
    const bool clamped = sum < kRenormEps;  // the denominator is then a constant
    const T denom = static_cast<T>(std::max(sum, kRenormEps));
    // g_j = s_j / S  =>  ds_j += dg_j / S,  ds_i -= (sum_j dg_j s_j) / S^2 for every i summed in S.
    T dot = 0;
    for (int j = 0; j < top_k; ++j) {
      const int64_t r = t * top_k + j;
      if (!route_kept(slot, r)) continue;
      dst[topk_idx[r]] += dgates[r] / denom;
      dot += dgates[r] * st[topk_idx[r]];
    }
    if (clamped) continue;
    for (int j = 0; j < top_k; ++j) {
      const int64_t r = t * top_k + j;
      if (!params.after_drop || route_kept(slot, r)) dst[topk_idx[r]] -= dot / (denom * denom);
    }
  }
}

template <typename T>
double router_aux_loss(const T* s, const int32_t* topk_idx, int64_t num_tokens, int64_t num_experts,
                       int top_k, AuxLossType type, ScoreFunc score_func, double coef, T* ds) {
  check_router_sizes(num_tokens, num_experts, "router_aux_loss");
  if (type == AuxLossType::kNone || num_tokens == 0) return 0.0;
  const int64_t num_t = num_tokens, num_e = num_experts;
  // f_e: which choices count, and the factor A in front of sum_e P_e f_e.
  const bool first_only = type == AuxLossType::kDeepSpeed && top_k <= 2;
  const double factor = (type == AuxLossType::kDeepSpeed && top_k > 2)
                            ? static_cast<double>(num_e) / top_k
                            : static_cast<double>(num_e);
  std::vector<double> frac(num_e, 0.0), mean_p(num_e, 0.0);
  for (int64_t t = 0; t < num_t; ++t) {
    for (int j = 0; j < (first_only ? 1 : top_k); ++j) frac[topk_idx[t * top_k + j]] += 1.0 / num_t;
  }
  std::vector<double> p(num_e);
  auto token_probs = [&](int64_t t) {  // p[t, :] and its normalizer
    const T* st = s + t * num_e;
    double norm = 1.0;
    if (score_func == ScoreFunc::kSigmoid) {
      norm = 0;
      for (int64_t e = 0; e < num_e; ++e) norm += static_cast<double>(st[e]);
    }
    for (int64_t e = 0; e < num_e; ++e) p[e] = static_cast<double>(st[e]) / norm;
    return norm;
  };
  for (int64_t t = 0; t < num_t; ++t) {
    token_probs(t);
    for (int64_t e = 0; e < num_e; ++e) mean_p[e] += p[e] / num_t;
  }
  double loss = 0;
  for (int64_t e = 0; e < num_e; ++e) loss += mean_p[e] * frac[e];
  loss *= factor;
  if (ds != nullptr && coef != 0.0) {
    // dloss/dp[t,e] = A f_e / T; for sigmoid, back through p = s / sum(s).
    for (int64_t t = 0; t < num_t; ++t) {
      T* dst = ds + t * num_e;
      if (score_func == ScoreFunc::kSoftmax) {
        for (int64_t e = 0; e < num_e; ++e)
          dst[e] += static_cast<T>(coef * factor * frac[e] / num_t);
        continue;
      }
      const double norm = token_probs(t);
      double dot = 0;
      for (int64_t e = 0; e < num_e; ++e) dot += factor * frac[e] / num_t * p[e];
      for (int64_t e = 0; e < num_e; ++e)
        dst[e] += static_cast<T>(coef * (factor * frac[e] / num_t - dot) / norm);
    }
  }
  return loss;
}

template <typename T>
double router_z_loss(const T* z, int64_t num_tokens, int64_t num_experts, double coef, T* dz) {
  check_router_sizes(num_tokens, num_experts, "router_z_loss");
  if (num_tokens == 0) return 0.0;
  double loss = 0;
  for (int64_t t = 0; t < num_tokens; ++t) {
    const T* zt = z + t * num_experts;
    const double m = static_cast<double>(*std::max_element(zt, zt + num_experts));
    double sum = 0;
    for (int64_t e = 0; e < num_experts; ++e) sum += std::exp(static_cast<double>(zt[e]) - m);
    const double lse = m + std::log(sum);
    loss += lse * lse / num_tokens;
    if (dz != nullptr && coef != 0.0) {
      // d(lse^2)/dz_e = 2 lse softmax_e
      T* dzt = dz + t * num_experts;
      for (int64_t e = 0; e < num_experts; ++e) {
        dzt[e] += static_cast<T>(coef * 2.0 * lse * std::exp(static_cast<double>(zt[e]) - m) / sum /
                                 num_tokens);
      }
    }
  }
  return loss;
}

template <typename T>
void router_scores_backward(const T* s, const T* ds, int64_t num_tokens, int64_t num_experts,
                            ScoreFunc score_func, T* dz) {
  check_router_sizes(num_tokens, num_experts, "router_scores_backward");
  for (int64_t t = 0; t < num_tokens; ++t) {
    const T* st = s + t * num_experts;
    const T* dst = ds + t * num_experts;
    T* dzt = dz + t * num_experts;
    if (score_func == ScoreFunc::kSigmoid) {
      for (int64_t e = 0; e < num_experts; ++e) dzt[e] += dst[e] * st[e] * (T(1) - st[e]);
      continue;
    }
    T dot = 0;
    for (int64_t e = 0; e < num_experts; ++e) dot += dst[e] * st[e];
    for (int64_t e = 0; e < num_experts; ++e) dzt[e] += st[e] * (dst[e] - dot);
  }
}

template <typename T>
void router_logits_backward(const T* dz, const T* xj, const T* wg, const T* u, int64_t num_tokens,
                            int64_t d, int64_t num_experts, T* dwg, T* dx) {
  check_router_sizes(num_tokens, num_experts, "router_logits_backward");
  cpu::gemm<T>(true, false, num_experts, d, num_tokens, T(1), dz, xj, T(0), dwg);
  if (u == nullptr) {
    cpu::gemm<T>(false, false, num_tokens, d, num_experts, T(1), dz, wg, T(1), dx);
    return;
  }
  std::vector<T> dxj(static_cast<size_t>(num_tokens * d));
  cpu::gemm<T>(false, false, num_tokens, d, num_experts, T(1), dz, wg, T(0), dxj.data());
  for (int64_t i = 0; i < num_tokens * d; ++i) dx[i] += dxj[i] * u[i];
}

#define MOEX_INSTANTIATE_ROUTER(T)                                                                 \
  template void router_jitter<T>(const T*, int64_t, int64_t, float, uint64_t, uint64_t, T*, T*);   \
  template void router_logits<T>(const T*, const T*, int64_t, int64_t, int64_t, T*);               \
  template void router_scores<T>(const T*, int64_t, int64_t, ScoreFunc, T*);                       \
  template void router_select<T>(const T*, const T*, const T*, int64_t, int64_t,                   \
                                 const RouterSelectParams&, int32_t*);                             \
  template void router_gates<T>(const T*, const int32_t*, const int32_t*, int64_t, int64_t, int,   \
                                const RouterGateParams&, T*);                                      \
  template void router_gates_backward<T>(const T*, const int32_t*, const int32_t*, const T*,       \
                                         int64_t, int64_t, int, const RouterGateParams&, T*);      \
  template double router_aux_loss<T>(const T*, const int32_t*, int64_t, int64_t, int, AuxLossType, \
                                     ScoreFunc, double, T*);                                       \
  template double router_z_loss<T>(const T*, int64_t, int64_t, double, T*);                        \
  template void router_scores_backward<T>(const T*, const T*, int64_t, int64_t, ScoreFunc, T*);    \
  template void router_logits_backward<T>(const T*, const T*, const T*, const T*, int64_t,         \
                                          int64_t, int64_t, T*, T*);
MOEX_INSTANTIATE_ROUTER(float)
MOEX_INSTANTIATE_ROUTER(double)
#undef MOEX_INSTANTIATE_ROUTER

}  // namespace moex::moe
