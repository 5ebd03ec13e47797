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

// Rows of q, k and v moved between the fused [q heads | k heads | v heads] layout and separate
// tensors, q and k rotated on the way (the serving write, the training split and its backward).
// Part j (q, k, v) of row r is read at src[j] + r * src_stride[j] and written at dst[j] +
// row * dst_stride[j], row = slots[r] for k and v when slots is set (pool rows), r otherwise.
struct QkvMove {
  const bf16* src[3] = {nullptr, nullptr, nullptr};
  bf16* dst[3] = {nullptr, nullptr, nullptr};
  int64_t src_stride[3] = {0, 0, 0}, dst_stride[3] = {0, 0, 0};
  const int32_t* slots = nullptr;      // [rows] k/v destination rows, or null
  const int32_t* positions = nullptr;  // [rows] positions, or null: start_pos + r % seq_len
  int64_t start_pos = 0, seq_len = 1;
  int64_t rows = 0, q_width = 0, kv_width = 0, head_dim = 0;
  float theta = 0.0f;  // <= 0: no rotation
  float sign = 1.0f;   // -1: rotate back (backward)
};

// One block per row. A work item is W pair indices of one q or k head, or W values of v.
template <int W>
__global__ void rope_qkv_move_kernel(QkvMove p) {
  extern __shared__ float2 cos_sin[];  // [half]
  wait_for_previous_kernel();
  const int hd = static_cast<int>(p.head_dim), half = hd / 2;
  const int64_t row = blockIdx.x, qw = p.q_width, kw = p.kv_width;
  const bool rope = p.theta > 0.0f;
  if (rope) {
    const int64_t pos = p.positions != nullptr ? p.positions[row] : p.start_pos + row % p.seq_len;
    form_table(cos_sin, half, hd, static_cast<float>(pos), p.theta, p.sign);
    __syncthreads();
  }
  const int64_t kv_row = p.slots != nullptr ? p.slots[row] : row;
  const bf16* q_in = p.src[0] + row * p.src_stride[0];
  const bf16* k_in = p.src[1] + row * p.src_stride[1];
  const bf16* v_in = p.src[2] + row * p.src_stride[2];
  bf16* q_out = p.dst[0] + row * p.dst_stride[0];
  bf16* k_out = p.dst[1] + kv_row * p.dst_stride[1];
  bf16* v_out = p.dst[2] + kv_row * p.dst_stride[2];
  const int per_head = half / W;
  const int64_t q_items = qw / hd * per_head, k_items = kw / hd * per_head, v_items = kw / W;
  for (int64_t it = threadIdx.x; it < q_items + k_items + v_items; it += blockDim.x) {
    if (it >= q_items + k_items) {
      const int64_t j = (it - q_items - k_items) * W;
      float x[W];
      load_chunk<W>(v_in + j, x);
      store_chunk<W>(v_out + j, x);
      continue;
    }
    const bool is_q = it < q_items;
    const int64_t item = is_q ? it : it - q_items;
    const int64_t off = item / per_head * hd + item % per_head * W;
    const bf16* in = (is_q ? q_in : k_in) + off;
    bf16* out = (is_q ? q_out : k_out) + off;
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

void check_qkv_widths(const char* op, int64_t rows, int64_t q_width, int64_t kv_width,
                      int64_t head_dim) {
  MOEX_CHECK(rows >= 0 && head_dim > 0 && head_dim % 2 == 0 && head_dim <= 8192, op,
             ": rows must be >= 0 and head_dim even in [2, 8192], got ", rows, ", ", head_dim);
  MOEX_CHECK(q_width > 0 && kv_width > 0 && q_width % head_dim == 0 && kv_width % head_dim == 0, op,
             ": q_width (", q_width, ") and kv_width (", kv_width,
             ") must be positive multiples of head_dim (", head_dim, ")");
  MOEX_CHECK(rows < (int64_t{1} << 31), op, ": ", rows, " rows is too many");
}

void launch_qkv_move(const QkvMove& m, cudaStream_t stream) {
  if (m.rows == 0) return;
  const int64_t half = m.head_dim / 2;
  bool vec = half % 8 == 0;
  for (int j = 0; j < 3; ++j)
    vec = vec && aligned16(m.src[j]) && aligned16(m.dst[j]) && m.src_stride[j] % 8 == 0 &&
          m.dst_stride[j] % 8 == 0;
  const int w = vec ? 8 : 1;
  const int64_t items = (m.q_width + m.kv_width) / m.head_dim * (half / w) + m.kv_width / w;
  const int threads = static_cast<int>(std::clamp<int64_t>(ceil_div(items, 32) * 32, 32, 256));
  const size_t smem = static_cast<size_t>(half) * sizeof(float2);
  const auto blocks = static_cast<unsigned>(m.rows);
  if (vec) {
    launch_kernel(rope_qkv_move_kernel<8>, blocks, threads, smem, stream, m);
  } else {
    launch_kernel(rope_qkv_move_kernel<1>, blocks, threads, smem, stream, m);
  }
  MOEX_LAUNCH_CHECK();
}

// A move of `rows` rows whose fused side ([R, Q + 2K], parts at columns 0, Q, Q + K) is the source
// (split) or the destination (merge); the caller sets the other side.
QkvMove fused_move(const char* op, void* qkv, bool fused_is_source, int64_t rows, int64_t qw,
                   int64_t kw, int64_t head_dim, double theta) {
  check_qkv_widths(op, rows, qw, kw, head_dim);
  QkvMove m;
  const int64_t column[3] = {0, qw, qw + kw};
  for (int j = 0; j < 3; ++j) {
    bf16* part = static_cast<bf16*>(qkv) + column[j];
    if (fused_is_source) {
      m.src[j] = part;
      m.src_stride[j] = qw + 2 * kw;
    } else {
      m.dst[j] = part;
      m.dst_stride[j] = qw + 2 * kw;
    }
  }
  m.rows = rows;
  m.q_width = qw;
  m.kv_width = kw;
  m.head_dim = head_dim;
  m.theta = static_cast<float>(theta);
  return m;
}

// A training split (q, k, v the destinations) or merge (their sources), row r at start_pos +
// r % seq_len.
QkvMove training_move(const RopeQkvTrainParams& p, bool backward) {
  QkvMove m = fused_move(backward ? "rope_qkv_merge_backward_bf16" : "rope_qkv_split_bf16", p.qkv,
                         !backward, p.rows, p.q_width, p.kv_width, p.head_dim, p.theta);
  MOEX_CHECK(p.seq_len > 0 && p.start_pos >= 0, "rope_qkv: seq_len must be > 0 and start_pos >= 0",
             ", got ", p.seq_len, ", ", p.start_pos);
  bf16* parts[3] = {static_cast<bf16*>(p.q), static_cast<bf16*>(p.k), static_cast<bf16*>(p.v)};
  const int64_t part_width[3] = {p.q_width, p.kv_width, p.kv_width};
  for (int j = 0; j < 3; ++j) {
    if (backward) {
      m.src[j] = parts[j];
      m.src_stride[j] = part_width[j];
    } else {
      m.dst[j] = parts[j];
      m.dst_stride[j] = part_width[j];
    }
  }
  m.start_pos = p.start_pos;
  m.seq_len = p.seq_len;
  m.sign = backward ? -1.0f : 1.0f;
  return m;
}

}  // namespace

void rope_qkv_paged_bf16(const RopeQkvPagedParams& p, cudaStream_t stream) {
  QkvMove m = fused_move("rope_qkv_paged_bf16", const_cast<void*>(p.qkv), true, p.rows, p.q_width,
                         p.kv_width, p.head_dim, p.theta);
  m.dst[0] = static_cast<bf16*>(p.q);
  m.dst[1] = static_cast<bf16*>(p.k_pool);
  m.dst[2] = static_cast<bf16*>(p.v_pool);
  m.dst_stride[0] = p.q_width;
  m.dst_stride[1] = m.dst_stride[2] = p.kv_width;
  m.slots = p.slots;
  m.positions = p.positions;
  launch_qkv_move(m, stream);
}

void rope_qkv_split_bf16(const RopeQkvTrainParams& p, cudaStream_t stream) {
  launch_qkv_move(training_move(p, false), stream);
}

void rope_qkv_merge_backward_bf16(const RopeQkvTrainParams& p, cudaStream_t stream) {
  launch_qkv_move(training_move(p, true), stream);
}

void rope_forward_bf16(const void* x, void* y, const RopeParams& p, cudaStream_t stream) {
  rope_apply("rope_forward_bf16", x, y, p, 1.0f, stream);
}

void rope_backward_bf16(const void* dy, void* dx, const RopeParams& p, cudaStream_t stream) {
  rope_apply("rope_backward_bf16", dy, dx, p, -1.0f, stream);
}

}  // namespace moex::cuda
