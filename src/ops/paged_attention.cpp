#include "ops/paged_attention.h"

#include <algorithm>
#include <array>
#include <string>
#include <vector>

#include "core/env.h"
#include "cpu/paged_attention.h"
#include "cpu/rope.h"
#include "ops/device_dispatch.h"
#include "ops/profile.h"

#if MOEX_WITH_CUDA
#include "cuda/paged_attention.h"
#include "cuda/rope.h"
#endif

namespace moex::ops {
namespace {

// Index tensors live where the op runs: the CPU checks them itself, a GPU trusts the caller's
// check_paged_rows (they were uploaded after it).
void expect_indices(const char* op, const char* what, const Tensor& t, const Device& dev,
                    int64_t numel) {
  MOEX_CHECK(t.defined() && t.dtype() == DType::kI32 && t.numel() == numel, op, ": ", what,
             " must be i32 with ", numel, " elements, got ",
             t.defined() ? t.shape().str() : std::string("none"));
  MOEX_CHECK(t.device() == dev, op, ": ", what, " must be on ", dev.str(), " like the activations");
}

}  // namespace

void check_paged_rows(const Tensor& tables, const Tensor& row_seq, const Tensor& row_pos,
                      int64_t block_size, int64_t num_blocks) {
  const char* op = "paged attention";
  MOEX_CHECK(tables.ndim() == 2 && tables.device().is_cpu() && tables.dtype() == DType::kI32, op,
             ": tables must be an i32 host tensor [S, max_blocks]");
  MOEX_CHECK(block_size > 0, op, ": block_size must be > 0");
  expect_indices(op, "row_seq", row_seq, Device::cpu(), row_seq.numel());
  expect_indices(op, "row_pos", row_pos, Device::cpu(), row_seq.numel());
  const int64_t seqs = tables.dim(0), max_blocks = tables.dim(1);
  const int32_t *t = tables.data<int32_t>(), *seq = row_seq.data<int32_t>(),
                *pos = row_pos.data<int32_t>();
  for (int64_t r = 0; r < row_seq.numel(); ++r) {
    MOEX_CHECK(seq[r] >= 0 && seq[r] < seqs, op, ": row ", r, " names sequence ", seq[r], " of ",
               seqs);
    MOEX_CHECK(pos[r] >= 0 && pos[r] / block_size < max_blocks, op, ": row ", r, " at position ",
               pos[r], " is past its block table (", max_blocks, " blocks of ", block_size, ")");
    for (int64_t b = 0; b <= pos[r] / block_size; ++b) {
      const int32_t block = t[seq[r] * max_blocks + b];
      MOEX_CHECK(block >= 0 && block < num_blocks, op, ": row ", r, " block ", b, " is ", block,
                 ", outside the pool of ", num_blocks);
    }
  }
}

PagedTilePlan plan_paged_tiles(const int32_t* row_seq, const int32_t* row_pos, int64_t rows) {
  // MOEX_PAGED_TILES=0: every row alone, to measure the tiles against (docs/gpu-model.md).
  static const bool enabled = env_on_unless_zero("MOEX_PAGED_TILES");
  PagedTilePlan plan;
  if (!enabled) return plan;
  std::vector<std::array<int32_t, kPagedTileWords>> tiles;
  for (int64_t begin = 0, end = 0; begin < rows; begin = end) {
    // [begin, end): one sequence at consecutive positions.
    for (end = begin + 1;
         end < rows && row_seq[end] == row_seq[begin] && row_pos[end] == row_pos[end - 1] + 1;
         ++end) {
    }
    if (end - begin < kPagedTileMinRows) {
      for (int64_t r = begin; r < end; ++r) plan.rest.push_back(static_cast<int32_t>(r));
      continue;
    }
    for (int64_t r = begin; r < end; r += kPagedTileRows)
      tiles.push_back({static_cast<int32_t>(r),
                       static_cast<int32_t>(std::min(kPagedTileRows, end - r)), row_seq[r],
                       row_pos[r]});
  }
  if (tiles.empty()) return {};
  // The most keys first: the longest CTAs start before the short ones fill the gaps.
  std::stable_sort(tiles.begin(), tiles.end(),
                   [](const auto& a, const auto& b) { return a[3] + a[1] > b[3] + b[1]; });
  for (const auto& t : tiles) plan.tiles.insert(plan.tiles.end(), t.begin(), t.end());
  return plan;
}

void check_paged_tiles(const Tensor& tiles, const Tensor& rest_rows, const Tensor& row_seq,
                       const Tensor& row_pos) {
  const char* op = "paged attention";
  const int64_t rows = row_seq.numel();
  const int32_t *seq = row_seq.data<int32_t>(), *pos = row_pos.data<int32_t>();
  const int32_t *t = tiles.data<int32_t>(), *rest = rest_rows.data<int32_t>();
  std::vector<int> seen(static_cast<size_t>(rows), 0);
  for (int64_t i = 0; i < tiles.dim(0); ++i) {
    const int32_t* tile = t + i * kPagedTileWords;
    const int64_t first = tile[0], n = tile[1];
    MOEX_CHECK(n >= 1 && n <= kPagedTileRows && first >= 0 && first + n <= rows, op, ": tile ", i,
               " holds rows ", first, "..", first + n - 1, " of ", rows, " (at most ",
               kPagedTileRows, ")");
    for (int64_t r = first; r < first + n; ++r) {
      MOEX_CHECK(seq[r] == tile[2] && pos[r] == tile[3] + (r - first), op, ": tile ", i,
                 " says row ", r, " is position ", tile[3] + (r - first), " of sequence ", tile[2],
                 ", it is ", pos[r], " of ", seq[r]);
      ++seen[static_cast<size_t>(r)];
    }
  }
  for (int64_t i = 0; i < rest_rows.numel(); ++i) {
    MOEX_CHECK(rest[i] >= 0 && rest[i] < rows, op, ": rest row ", rest[i], " of ", rows);
    ++seen[static_cast<size_t>(rest[i])];
  }
  for (int64_t r = 0; r < rows; ++r)
    MOEX_CHECK(seen[static_cast<size_t>(r)] == 1, op, ": row ", r, " is in ", seen[r],
               " tiles and rest rows, not one");
}

void paged_attention(const Tensor& q, const Tensor& k_pool, const Tensor& v_pool,
                     const Tensor& tables, const Tensor& row_seq, const Tensor& row_pos,
                     const Tensor& out, const Tensor& tiles, const Tensor& rest_rows) {
  const char* op = "paged_attention";
  const Device dev = detail::common_device(op, {&q, &k_pool, &v_pool, &out});
  const ProfileScope profile(op, dev);
  MOEX_CHECK(q.ndim() == 3 && k_pool.ndim() == 4 && k_pool.shape() == v_pool.shape() &&
                 k_pool.dim(3) == q.dim(2) && k_pool.dim(2) > 0 && q.dim(1) % k_pool.dim(2) == 0,
             op, ": q ", q.shape().str(), " does not fit the pool ", k_pool.shape().str());
  MOEX_CHECK(tables.ndim() == 2, op, ": tables must be [S, max_blocks], got ",
             tables.shape().str());
  const int64_t rows = q.dim(0);
  const DType dt = detail::compute_dtype(dev);
  detail::expect(op, "q", q, dt, q.numel());
  detail::expect(op, "k_pool", k_pool, dt, k_pool.numel());
  detail::expect(op, "v_pool", v_pool, dt, v_pool.numel());
  detail::expect(op, "out", out, dt, q.numel());
  expect_indices(op, "tables", tables, dev, tables.numel());
  expect_indices(op, "row_seq", row_seq, dev, rows);
  expect_indices(op, "row_pos", row_pos, dev, rows);
  MOEX_CHECK(tiles.defined() == rest_rows.defined(), op, ": tiles and rest_rows come together");
  if (tiles.defined()) {
    MOEX_CHECK(tiles.ndim() == 2 && tiles.dim(1) == kPagedTileWords, op, ": tiles must be [T, ",
               kPagedTileWords, "], got ", tiles.shape().str());
    expect_indices(op, "tiles", tiles, dev, tiles.numel());
    expect_indices(op, "rest_rows", rest_rows, dev, rest_rows.numel());
    MOEX_CHECK(rest_rows.numel() < rows, op, ": ", rest_rows.numel(), " rest rows of ", rows,
               " leave none for the tiles");
    // The tile kernel keeps a pool row index in 32 bits.
    MOEX_CHECK(k_pool.dim(0) * k_pool.dim(1) < (int64_t{1} << 31), op, ": a pool of ",
               k_pool.dim(0) * k_pool.dim(1), " slots is too large for the tiles");
  }
  if (dev.is_cpu()) {
    // Every row alone: the tiles only choose the GPU's kernels, but a plan must still be one the
    // GPU could run.
    check_paged_rows(tables, row_seq, row_pos, k_pool.dim(1), k_pool.dim(0));
    if (tiles.defined()) check_paged_tiles(tiles, rest_rows, row_seq, row_pos);
    const cpu::PagedAttentionShape s{rows,          q.dim(1),      k_pool.dim(2), q.dim(2),
                                     k_pool.dim(1), tables.dim(1), k_pool.dim(0)};
    cpu::paged_attention(q.data<float>(), k_pool.data<float>(), v_pool.data<float>(),
                         tables.data<int32_t>(), row_seq.data<int32_t>(), row_pos.data<int32_t>(),
                         s, out.data<float>());
    return;
  }
  MOEX_CUDA_TWIN(op, {
    cuda::PagedAttentionParams p;
    p.q = q.raw_data();
    p.k_pool = k_pool.raw_data();
    p.v_pool = v_pool.raw_data();
    p.tables = tables.data<int32_t>();
    p.row_seq = row_seq.data<int32_t>();
    p.row_pos = row_pos.data<int32_t>();
    p.out = out.raw_data();
    p.rows = rows;
    p.heads = q.dim(1);
    p.kv_heads = k_pool.dim(2);
    p.head_dim = q.dim(2);
    p.block_size = k_pool.dim(1);
    p.max_blocks = tables.dim(1);
    if (tiles.defined()) {
      p.tiles = tiles.data<int32_t>();
      p.num_tiles = tiles.dim(0);
      p.tile_rows = kPagedTileRows;
      p.rest_rows = rest_rows.data<int32_t>();
      p.num_rest = rest_rows.numel();
    }
    cuda::paged_attention_bf16(p, detail::stream(dev));
  });
}

void scatter_rows(const Tensor& rows, const Tensor& slots, const Tensor& pool) {
  const char* op = "scatter_rows";
  const Device dev = detail::common_device(op, {&rows, &pool});
  const ProfileScope profile(op, dev);
  MOEX_CHECK(
      rows.ndim() == 2 && pool.ndim() >= 1 && rows.dim(1) > 0 && pool.numel() % rows.dim(1) == 0,
      op, ": rows ", rows.shape().str(), " do not fit the pool ", pool.shape().str());
  const int64_t width = rows.dim(1), num_slots = pool.numel() / width;
  const DType dt = detail::compute_dtype(dev);
  detail::expect(op, "rows", rows, dt, rows.numel());
  detail::expect(op, "pool", pool, dt, pool.numel());
  expect_indices(op, "slots", slots, dev, rows.dim(0));
  if (dev.is_cpu()) {
    cpu::scatter_rows(rows.data<float>(), slots.data<int32_t>(), rows.dim(0), width, num_slots,
                      pool.data<float>());
    return;
  }
  MOEX_CUDA_TWIN(op, cuda::scatter_rows_bf16(rows.raw_data(), slots.data<int32_t>(), rows.dim(0),
                                             width, pool.raw_data(), detail::stream(dev)));
}

void write_paged_qkv(const Tensor& qkv, int64_t head_dim, const Tensor& row_pos, double theta,
                     const Tensor& slots, const Tensor& q, const Tensor& k_pool,
                     const Tensor& v_pool) {
  const char* op = "write_paged_qkv";
  const Device dev = detail::common_device(op, {&qkv, &q, &k_pool, &v_pool});
  const ProfileScope profile(op, dev);
  MOEX_CHECK(qkv.ndim() == 2 && head_dim > 0 && head_dim % 2 == 0, op, ": qkv ", qkv.shape().str(),
             " must be [R, width], head_dim ", head_dim, " even");
  const int64_t rows = qkv.dim(0);
  if (rows == 0) return;
  // q holds R rows of qw values in any shape ([R, Q] or [1, R, H, Dh]).
  const int64_t qw = q.numel() / rows, kw = (qkv.dim(1) - qw) / 2;
  MOEX_CHECK(qw > 0 && kw > 0 && q.numel() == rows * qw && qw + 2 * kw == qkv.dim(1) &&
                 qw % head_dim == 0 && kw % head_dim == 0 && k_pool.numel() == v_pool.numel() &&
                 k_pool.numel() % kw == 0,
             op, ": qkv ", qkv.shape().str(), " is not [R, q ", q.shape().str(),
             " + 2 kv] of heads of ", head_dim, ", or the pools ", k_pool.shape().str(),
             " do not hold kv rows");
  const DType dt = detail::compute_dtype(dev);
  detail::expect(op, "qkv", qkv, dt, qkv.numel());
  detail::expect(op, "q", q, dt, q.numel());
  detail::expect(op, "k_pool", k_pool, dt, k_pool.numel());
  detail::expect(op, "v_pool", v_pool, dt, v_pool.numel());
  expect_indices(op, "row_pos", row_pos, dev, rows);
  expect_indices(op, "slots", slots, dev, rows);
  if (dev.is_cpu()) {
    // The unfused path's calls (same bits): split, RoPE over all rows at their positions, scatter.
    const int64_t num_slots = k_pool.numel() / kw;
    const float* src = qkv.data<float>();
    const int32_t *pos = row_pos.data<int32_t>(), *slot = slots.data<int32_t>();
    float *qp = q.data<float>(), *vp = v_pool.data<float>();
    // Every index first, so a bad one writes nothing.
    for (int64_t r = 0; r < rows; ++r) {
      MOEX_CHECK(slot[r] >= 0 && slot[r] < num_slots, op, ": row ", r, " slot ", slot[r],
                 " outside the pool of ", num_slots);
      MOEX_CHECK(pos[r] >= 0, op, ": row ", r, " position ", pos[r], " is negative");
    }
    std::vector<float> k(rows * kw);  // [R, K], rotated before its scatter
    for (int64_t r = 0; r < rows; ++r) {
      const float* in = src + r * (qw + 2 * kw);
      std::copy(in, in + qw, qp + r * qw);
      std::copy(in + qw, in + qw + kw, k.data() + r * kw);
      std::copy(in + qw + kw, in + qw + 2 * kw, vp + int64_t{slot[r]} * kw);
    }
    if (theta > 0) {
      cpu::RopeShape s{1, rows, qw / head_dim, head_dim, 0, theta, pos};
      cpu::rope_forward<float>(qp, s, qp);
      s.num_heads = kw / head_dim;
      cpu::rope_forward<float>(k.data(), s, k.data());
    }
    cpu::scatter_rows(k.data(), slot, rows, kw, num_slots, k_pool.data<float>());
    return;
  }
  MOEX_CUDA_TWIN(op, {
    cuda::RopeQkvPagedParams p;
    p.qkv = qkv.raw_data();
    p.positions = row_pos.data<int32_t>();
    p.slots = slots.data<int32_t>();
    p.q = q.raw_data();
    p.k_pool = k_pool.raw_data();
    p.v_pool = v_pool.raw_data();
    p.rows = rows;
    p.q_width = qw;
    p.kv_width = kw;
    p.head_dim = head_dim;
    p.theta = theta;
    cuda::rope_qkv_paged_bf16(p, detail::stream(dev));
  });
}

void gather_rows(const Tensor& src, const Tensor& index, const Tensor& out) {
  const char* op = "gather_rows";
  const Device dev = detail::common_device(op, {&src, &out});
  const ProfileScope profile(op, dev);
  MOEX_CHECK(src.ndim() == 2 && out.ndim() == 2 && src.dim(1) == out.dim(1), op, ": src ",
             src.shape().str(), " and out ", out.shape().str(), " must be [N, w] and [R, w]");
  const DType dt = detail::compute_dtype(dev);
  detail::expect(op, "src", src, dt, src.numel());
  detail::expect(op, "out", out, dt, out.numel());
  expect_indices(op, "index", index, dev, out.dim(0));
  if (dev.is_cpu()) {
    cpu::gather_rows(src.data<float>(), index.data<int32_t>(), out.dim(0), src.dim(1), src.dim(0),
                     out.data<float>());
    return;
  }
  MOEX_CUDA_TWIN(op, cuda::gather_rows_bf16(src.raw_data(), index.data<int32_t>(), out.dim(0),
                                            src.dim(1), out.raw_data(), detail::stream(dev)));
}

}  // namespace moex::ops
