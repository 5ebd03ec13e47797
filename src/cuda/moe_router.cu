#include <cfloat>

#include "core/rng.h"
#include "cuda/bf16_util.cuh"
#include "cuda/cuda_check.h"
#include "cuda/moe_router.h"
#include "moe/router.h"

namespace moex::cuda {
namespace {

__device__ __forceinline__ float jitter_factor(float eps, uint64_t seed, uint64_t stream,
                                               uint64_t index) {
  const float draw = philox_uniform(seed, stream, index);
  // (1 - eps) + (2 eps) draw, rounded step by step as on the CPU (no FMA contraction).
  return __fadd_rn(__fsub_rn(1.0f, eps), __fmul_rn(__fmul_rn(2.0f, eps), draw));
}

__global__ void router_input_kernel(const __nv_bfloat16* x, int64_t n, float eps, uint64_t seed,
                                    uint64_t stream, float* xj) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float v = __bfloat162float(x[i]);
    xj[i] =
        eps > 0.0f ? __fmul_rn(v, jitter_factor(eps, seed, stream, static_cast<uint64_t>(i))) : v;
  }
}

__global__ void router_backward_kernel(const float* __restrict__ z, const float* __restrict__ s,
                                       const int32_t* __restrict__ expert,
                                       const int32_t* __restrict__ slot,
                                       const float* __restrict__ dgates,
                                       const float* __restrict__ aux_grad, RouterBackwardParams p,
                                       float* __restrict__ dz) {
  const int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (t >= p.num_tokens) return;
  const int E = p.num_experts, k = p.top_k;
  const float* st = s + t * E;
  const float* zt = z + t * E;
  float* dzt = dz + t * E;
  const int32_t* sel = expert + t * k;
  // Sparse part of ds from the gates: one value per selected route.
  float sparse[kMaxTopK];
  for (int j = 0; j < k; ++j) sparse[j] = 0.0f;
  if (!p.renormalize) {
    for (int j = 0; j < k; ++j)
      if (slot[t * k + j] >= 0) sparse[j] = dgates[t * k + j];
  } else {
    double sum = 0.0;
    for (int j = 0; j < k; ++j)
      if (!p.renormalize_after_drop || slot[t * k + j] >= 0) sum += static_cast<double>(st[sel[j]]);
    const bool clamped = sum < static_cast<double>(FLT_EPSILON);
    const float denom = static_cast<float>(fmax(sum, static_cast<double>(FLT_EPSILON)));
    float dot = 0.0f;
    for (int j = 0; j < k; ++j) {
      if (slot[t * k + j] < 0) continue;
      sparse[j] += dgates[t * k + j] / denom;
      dot += dgates[t * k + j] * st[sel[j]];
    }
    if (!clamped) {
      for (int j = 0; j < k; ++j)
        if (!p.renormalize_after_drop || slot[t * k + j] >= 0) sparse[j] -= dot / (denom * denom);
    }
  }
  // Dense part from the aux loss: a_e (softmax) or through p = s / sum(s) (sigmoid).
  const bool aux = p.aux && p.aux_coef != 0.0f;
  float norm = 1.0f, aux_dot = 0.0f;
  if (aux && p.score_func == ScoreFunc::kSigmoid) {
    double acc = 0.0;
    for (int e = 0; e < E; ++e) acc += st[e];
    norm = static_cast<float>(acc);
    double d = 0.0;
    for (int e = 0; e < E; ++e) d += static_cast<double>(aux_grad[e]) * (st[e] / acc);
    aux_dot = static_cast<float>(d);
  }
  auto ds_at = [&](int e) {
    float v = 0.0f;
    for (int j = 0; j < k; ++j)
      if (sel[j] == e) v += sparse[j];
    if (aux) {
      v += p.score_func == ScoreFunc::kSoftmax ? p.aux_coef * aux_grad[e]
                                               : p.aux_coef * (aux_grad[e] - aux_dot) / norm;
    }
    return v;
  };
  if (p.score_func == ScoreFunc::kSoftmax) {
    float dot = 0.0f;
    for (int e = 0; e < E; ++e) dot += ds_at(e) * st[e];
    for (int e = 0; e < E; ++e) dzt[e] = st[e] * (ds_at(e) - dot);
  } else {
    for (int e = 0; e < E; ++e) dzt[e] = ds_at(e) * st[e] * (1.0f - st[e]);
  }
  if (p.z_coef != 0.0f) {
    float m = zt[0];
    for (int e = 1; e < E; ++e) m = fmaxf(m, zt[e]);
    float sum = 0.0f;
    for (int e = 0; e < E; ++e) sum += expf(zt[e] - m);
    const float lse = m + logf(sum);
    const float scale = p.z_coef * 2.0f * lse / (sum * static_cast<float>(p.num_tokens));
    for (int e = 0; e < E; ++e) dzt[e] += scale * expf(zt[e] - m);
  }
}

}  // namespace

void router_input_bf16(const void* x, int64_t num_tokens, int64_t d, float eps, uint64_t seed,
                       uint64_t offset, float* xj, cudaStream_t stream) {
  MOEX_CHECK(eps >= 0.0f && eps < 1.0f, "router_input_bf16: eps must be in [0, 1), got ", eps);
  const int64_t n = num_tokens * d;
  if (n == 0) return;
  router_input_kernel<<<grid_for(n, 256), 256, 0, stream>>>(
      static_cast<const __nv_bfloat16*>(x), n, eps, seed,
      moe::moe_rng_offset(offset, moe::MoERngUse::kJitter), xj);
  MOEX_LAUNCH_CHECK();
}

void router_backward(const float* z, const float* s, const int32_t* expert, const int32_t* slot,
                     const float* dgates, const float* aux_grad, const RouterBackwardParams& p,
                     float* dz, cudaStream_t stream) {
  MOEX_CHECK(p.top_k >= 1 && p.top_k <= kMaxTopK, "router_backward: top_k ", p.top_k,
             " out of range");
  MOEX_CHECK(p.num_experts > 0, "router_backward: num_experts must be > 0");
  if (p.num_tokens == 0) return;
  constexpr int kThreads = 128;
  router_backward_kernel<<<static_cast<unsigned>(ceil_div(p.num_tokens, kThreads)), kThreads, 0,
                           stream>>>(z, s, expert, slot, dgates, aux_grad, p, dz);
  MOEX_LAUNCH_CHECK();
}

}  // namespace moex::cuda
