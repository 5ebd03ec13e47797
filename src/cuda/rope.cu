#include <algorithm>

#include "cuda/bf16_chunk.cuh"
#include "cuda/cuda_check.h"
#include "cuda/launch.cuh"
#include "cuda/rope.h"

namespace moex::cuda {
namespace {

using bf16 = __nv_bfloat16;

// The block's cos/sin table [half] of one position: (cos, sign * sin) of pos * inv_freq[i].
__device__ __forceinline__ void form_table(float2* cos_sin, int half, int head_dim, float pos,
                                           float theta, float sign) {
  const int threads = blockDim.x * blockDim.y;
  for (int i = threadIdx.y * blockDim.x + threadIdx.x; i < half; i += threads) {
    const float inv_freq =
        1.0f / powf(theta, static_cast<float>(2 * i) / static_cast<float>(head_dim));
    float sn, cs;
    sincosf(pos * inv_freq, &sn, &cs);
    cos_sin[i] = make_float2(cs, sign * sn);
  }
}

// y = x rotated: element j of the first half pairs with element j of the second, (c, s) the
// table's (cos, sign * sin) at their pair index. Both kernels rotate with this, so they give the
// same bits.
template <int W>
__device__ __forceinline__ void rotate(const float (&x1)[W], const float (&x2)[W],
                                       const float (&c)[W], const float (&s)[W], float (&y1)[W],
                                       float (&y2)[W]) {
#pragma unroll
  for (int j = 0; j < W; ++j) {
    y1[j] = x1[j] * c[j] - x2[j] * s[j];
    y2[j] = x2[j] * c[j] + x1[j] * s[j];
  }
}

// One block per token (b, t). Its cos/sin table [half] is formed once in shared memory (fp32, as
// the twin and transformers: inv_freq, then pos * inv_freq, then cos/sin) and reused by every head,
// so the transcendental cost is per token, not per element. threadIdx.x walks chunks of W pair
// indices i (i pairs with i + half), threadIdx.y the heads. Each thread's first chunk is loaded
// before the table is formed, so the load latency hides behind the sin/cos work.
template <int W>
__global__ void rope_kernel(const bf16* x, bf16* y, int64_t seq_len, int64_t num_heads,
                            int head_dim, int64_t start_pos, const int32_t* positions, float theta,
                            float sign) {
  extern __shared__ float2 cos_sin[];  // [half]: (cos, sign * sin)
  const int half = head_dim / 2;
  const int64_t token = blockIdx.x;  // b * seq_len + t
  const int64_t row = num_heads * head_dim;
  const bf16* xt = x + token * row;
  bf16* yt = y + token * row;
  const int first_i = threadIdx.x * W;
  const bool has_first = first_i < half && threadIdx.y < num_heads;
  float x1[W], x2[W];
  if (has_first) {
    const int64_t off = int64_t{threadIdx.y} * head_dim + first_i;
    load_chunk<W>(xt + off, x1);
    load_chunk<W>(xt + off + half, x2);
  }
  const float pos =
      static_cast<float>(positions != nullptr ? positions[token] : start_pos + token % seq_len);
  form_table(cos_sin, half, head_dim, pos, theta, sign);
  __syncthreads();
  bool first = has_first;
  for (int i0 = first_i; i0 < half; i0 += blockDim.x * W) {
    float c[W], s[W];
#pragma unroll
    for (int j = 0; j < W; ++j) {
      const float2 t = cos_sin[i0 + j];
      c[j] = t.x;
      s[j] = t.y;
    }
    for (int64_t h = threadIdx.y; h < num_heads; h += blockDim.y) {
      const int64_t off = h * head_dim + i0;
      if (!first) {
        load_chunk<W>(xt + off, x1);
        load_chunk<W>(xt + off + half, x2);
      }
      first = false;
      float y1[W], y2[W];
      rotate<W>(x1, x2, c, s, y1, y2);
      store_chunk<W>(yt + off, y1);  // y may alias x: this thread read both halves already
      store_chunk<W>(yt + off + half, y2);
    }
  }
}

void rope_apply(const char* op, const void* x, void* y, const RopeParams& p, float sign,
                cudaStream_t stream) {
  MOEX_CHECK(p.batch >= 0 && p.seq_len >= 0, op, ": batch and seq_len must be >= 0, got ", p.batch,
             ", ", p.seq_len);
  MOEX_CHECK(p.num_heads > 0, op, ": num_heads must be > 0, got ", p.num_heads);
  MOEX_CHECK(p.head_dim > 0 && p.head_dim % 2 == 0 && p.head_dim <= 8192, op,
             ": head_dim must be even, in [2, 8192] (cos/sin table in shared memory), got ",
             p.head_dim);
  MOEX_CHECK(p.start_pos >= 0, op, ": start_pos must be >= 0, got ", p.start_pos);
  MOEX_CHECK(p.theta > 0, op, ": theta must be > 0, got ", p.theta);
  MOEX_CHECK(p.positions == nullptr || p.batch == 1, op,
             ": a position per token needs batch 1, got ", p.batch);
  const int64_t tokens = p.batch * p.seq_len;
  if (tokens == 0) return;
  MOEX_CHECK(tokens < (int64_t{1} << 31), op, ": batch * seq_len = ", tokens, " is too large");
  const int half = static_cast<int>(p.head_dim / 2);
  const bool vec = half % 8 == 0 && aligned16(x) && aligned16(y);
  const int w = vec ? 8 : 1;
  // About 256 threads per block: x covers the chunks of one head, y the heads.
  const int tx = static_cast<int>(std::min<int64_t>(ceil_div(half, w), 256));
  const int ty = static_cast<int>(std::min<int64_t>(std::max(1, 256 / tx), p.num_heads));
  const dim3 block(tx, ty);
  const auto* xs = static_cast<const bf16*>(x);
  auto* ys = static_cast<bf16*>(y);
  const float theta = static_cast<float>(p.theta);
  const int hd = static_cast<int>(p.head_dim);
  const size_t smem = static_cast<size_t>(half) * sizeof(float2);
  if (vec) {
    rope_kernel<8><<<static_cast<unsigned>(tokens), block, smem, stream>>>(
        xs, ys, p.seq_len, p.num_heads, hd, p.start_pos, p.positions, theta, sign);
  } else {
    rope_kernel<1><<<static_cast<unsigned>(tokens), block, smem, stream>>>(
        xs, ys, p.seq_len, p.num_heads, hd, p.start_pos, p.positions, theta, sign);
  }
  MOEX_LAUNCH_CHECK();
}

// One block per row: the row's q heads rotated into q, its k heads rotated into its pool slot, its
// v copied there. A work item is W pair indices of one q or k head, or W values of v.
template <int W>
__global__ void rope_qkv_paged_kernel(RopeQkvPagedParams p, float theta) {
  extern __shared__ float2 cos_sin[];  // [half]
  wait_for_previous_kernel();
  const int hd = static_cast<int>(p.head_dim), half = hd / 2;
  const int64_t row = blockIdx.x, qw = p.q_width, kw = p.kv_width;
  const bool rope = theta > 0.0f;
  if (rope) {
    form_table(cos_sin, half, hd, static_cast<float>(p.positions[row]), theta, 1.0f);
    __syncthreads();
  }
  const bf16* src = static_cast<const bf16*>(p.qkv) + row * (qw + 2 * kw);
  const int64_t slot = p.slots[row];
  bf16* q = static_cast<bf16*>(p.q) + row * qw;
  bf16* k = static_cast<bf16*>(p.k_pool) + slot * kw;
  bf16* v = static_cast<bf16*>(p.v_pool) + slot * kw;
  const int per_head = half / W;
  const int64_t q_items = qw / hd * per_head, k_items = kw / hd * per_head, v_items = kw / W;
  for (int64_t it = threadIdx.x; it < q_items + k_items + v_items; it += blockDim.x) {
    if (it >= q_items + k_items) {
      const int64_t j = (it - q_items - k_items) * W;
      float x[W];
      load_chunk<W>(src + qw + kw + j, x);
      store_chunk<W>(v + j, x);
      continue;
    }
    const bool is_q = it < q_items;
    const int64_t item = is_q ? it : it - q_items;
    const int64_t off = item / per_head * hd + item % per_head * W;
    const bf16* in = src + (is_q ? 0 : qw) + off;
    bf16* out = (is_q ? q : k) + off;
    float x1[W], x2[W];
    load_chunk<W>(in, x1);
    load_chunk<W>(in + half, x2);
    if (rope) {
      const int i0 = static_cast<int>(item % per_head) * W;
      float c[W], sn[W], y1[W], y2[W];
#pragma unroll
      for (int j = 0; j < W; ++j) {
        c[j] = cos_sin[i0 + j].x;
        sn[j] = cos_sin[i0 + j].y;
      }
      rotate<W>(x1, x2, c, sn, y1, y2);
      store_chunk<W>(out, y1);
      store_chunk<W>(out + half, y2);
    } else {
      store_chunk<W>(out, x1);
      store_chunk<W>(out + half, x2);
    }
  }
}

}  // namespace

void rope_qkv_paged_bf16(const RopeQkvPagedParams& p, cudaStream_t stream) {
  const char* op = "rope_qkv_paged_bf16";
  MOEX_CHECK(p.rows >= 0 && p.head_dim > 0 && p.head_dim % 2 == 0 && p.head_dim <= 8192, op,
             ": rows must be >= 0 and head_dim even in [2, 8192], got ", p.rows, ", ", p.head_dim);
  MOEX_CHECK(p.q_width > 0 && p.kv_width > 0 && p.q_width % p.head_dim == 0 &&
                 p.kv_width % p.head_dim == 0,
             op, ": q_width (", p.q_width, ") and kv_width (", p.kv_width,
             ") must be positive multiples of head_dim (", p.head_dim, ")");
  if (p.rows == 0) return;
  const int64_t half = p.head_dim / 2;
  const bool vec = half % 8 == 0 && aligned16(p.qkv) && aligned16(p.q) && aligned16(p.k_pool) &&
                   aligned16(p.v_pool);
  const size_t smem = static_cast<size_t>(half) * sizeof(float2);
  const float theta = static_cast<float>(p.theta);
  if (vec) {
    launch_kernel(rope_qkv_paged_kernel<8>, static_cast<unsigned>(p.rows), 256, smem, stream, p,
                  theta);
  } else {
    launch_kernel(rope_qkv_paged_kernel<1>, static_cast<unsigned>(p.rows), 256, smem, stream, p,
                  theta);
  }
  MOEX_LAUNCH_CHECK();
}

void rope_forward_bf16(const void* x, void* y, const RopeParams& p, cudaStream_t stream) {
  rope_apply("rope_forward_bf16", x, y, p, 1.0f, stream);
}

void rope_backward_bf16(const void* dy, void* dx, const RopeParams& p, cudaStream_t stream) {
  rope_apply("rope_backward_bf16", dy, dx, p, -1.0f, stream);
}

}  // namespace moex::cuda
