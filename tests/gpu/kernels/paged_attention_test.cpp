// Serving kernels against their CPU twins on the same bf16-rounded inputs: paged attention of rows
// of several sequences (shuffled blocks, a prefill chunk, single decode rows, a long sequence, GQA,
// head dims below and above one warp's width), RoPE at a position per row, and the row
// scatter/gather. Outputs start poisoned, so an unwritten element fails.
#include "cpu/paged_attention.h"

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "cpu/rope.h"
#include "cuda/paged_attention.h"
#include "cuda/rope.h"
#include "kernel_test_util.h"

namespace moex {
namespace {

using kt::DevBuf;
using kt::download_bf16;
using kt::rand_vec;
using kt::rel_l2;
using kt::round_bf16;
using kt::to_bf16;
using kt::upload;

class PagedAttentionTest : public kt::GpuKernel {};

struct PagedCase {
  int64_t heads, kv_heads, head_dim, block_size;
  std::string tag() const {
    return "H " + std::to_string(heads) + " KVH " + std::to_string(kv_heads) + " Dh " +
           std::to_string(head_dim) + " bs " + std::to_string(block_size);
  }
};

// One step's rows over a pool of num_blocks blocks: sequence s holds positions [0, ends[s]) in
// blocks handed out in a shuffled order (`shuffle` apart, modulo num_blocks), and its rows this
// step are positions [firsts[s], ends[s]). Random q, k and v (seeds seed..seed + 2) rounded to
// bf16, the CPU twin's output of every row, and the device copies with `params` for a launch over
// every row into `out()` (poisoned).
struct PagedStep {
  std::vector<int32_t> table, row_seq, row_pos;
  std::vector<float> ref;
  int64_t rows = 0, q_n = 0;
  std::vector<DevBuf> bufs;  // q, k, v, tables, row_seq, row_pos, out
  cuda::PagedAttentionParams params;
  DevBuf& out() { return bufs.back(); }
};

PagedStep make_paged_step(const PagedCase& c, int64_t num_blocks, int64_t max_blocks,
                          const std::vector<int64_t>& firsts, const std::vector<int64_t>& ends,
                          int32_t shuffle, uint64_t seed) {
  PagedStep st;
  const int64_t seqs = static_cast<int64_t>(ends.size());
  st.table.assign(seqs * max_blocks, -1);
  int32_t next = 0;
  for (int64_t s = 0; s < seqs; ++s) {
    for (int64_t b = 0; b * c.block_size < ends[s]; ++b)
      st.table[s * max_blocks + b] = (next++ * shuffle) % num_blocks;  // distinct, out of order
    for (int64_t p = firsts[s]; p < ends[s]; ++p) {
      st.row_seq.push_back(static_cast<int32_t>(s));
      st.row_pos.push_back(static_cast<int32_t>(p));
    }
  }
  st.rows = static_cast<int64_t>(st.row_seq.size());
  const int64_t pool_n = num_blocks * c.block_size * c.kv_heads * c.head_dim;
  st.q_n = st.rows * c.heads * c.head_dim;
  const auto k = round_bf16(rand_vec(pool_n, seed)), v = round_bf16(rand_vec(pool_n, seed + 1));
  const auto q = round_bf16(rand_vec(st.q_n, seed + 2, -2, 2));
  st.ref.resize(st.q_n);
  const cpu::PagedAttentionShape shape{st.rows,      c.heads,    c.kv_heads, c.head_dim,
                                       c.block_size, max_blocks, num_blocks};
  cpu::paged_attention(q.data(), k.data(), v.data(), st.table.data(), st.row_seq.data(),
                       st.row_pos.data(), shape, st.ref.data());
  st.bufs.reserve(7);
  for (const auto* host : {&q, &k, &v}) st.bufs.push_back(upload(to_bf16(*host)));
  for (const auto* host : {&st.table, &st.row_seq, &st.row_pos}) st.bufs.push_back(upload(*host));
  st.bufs.emplace_back(st.q_n * 2);
  cuda::PagedAttentionParams& p = st.params;
  p.q = st.bufs[0].ptr;
  p.k_pool = st.bufs[1].ptr;
  p.v_pool = st.bufs[2].ptr;
  p.tables = st.bufs[3].as<int32_t>();
  p.row_seq = st.bufs[4].as<int32_t>();
  p.row_pos = st.bufs[5].as<int32_t>();
  p.out = st.out().ptr;
  p.rows = st.rows;
  p.heads = c.heads;
  p.kv_heads = c.kv_heads;
  p.head_dim = c.head_dim;
  p.block_size = c.block_size;
  p.max_blocks = max_blocks;
  return st;
}

TEST_F(PagedAttentionTest, MatchesCpu) {
  cuda::CudaContext ctx;
  // Query heads per KV head 1, 2, 3 (one head a block), 4, 6 (two), 8; head dims over each of the
  // kernel's 64, 128 and 256 register widths, full and partial.
  for (const PagedCase c :
       {PagedCase{4, 2, 8, 4}, PagedCase{32, 8, 128, 16}, PagedCase{6, 6, 40, 3},
        PagedCase{24, 3, 256, 8}, PagedCase{12, 2, 64, 5}, PagedCase{9, 3, 96, 16},
        PagedCase{16, 2, 200, 4}}) {
    // Prefill chunks, a decode row, and a last sequence long enough that every warp of a row
    // walks several passes.
    PagedStep st = make_paged_step(c, /*num_blocks=*/160, /*max_blocks=*/110, {5, 36, 0, 298},
                                   {9, 37, 3, 300}, /*shuffle=*/17, /*seed=*/61);
    cuda::PagedAttentionParams p = st.params;
    // The launcher's choice, then every number of query heads per block the group allows, each
    // with the positions split over 1, 3 and 32 blocks (a row takes at most one split per 64 of its
    // positions, so the 300-position row merges 3 and 5 splits; shorter rows fewer).
    for (const int g : {0, 1, 2, 4, 8}) {
      if (g > 0 && (c.heads / c.kv_heads) % g != 0) continue;
      for (const int splits : {0, 1, 3, 32}) {
        p.heads_per_block = g;
        p.position_splits = splits;
        st.out().poison();
        cuda::paged_attention_bf16(p, ctx.stream());
        // fp32 softmax and accumulation, one bf16 rounding of the output.
        EXPECT_LT(rel_l2(download_bf16(st.out().ptr, st.q_n), st.ref), 4e-3)
            << c.tag() << " heads per block " << g << " position splits " << splits;
      }
    }
  }
}

// Prompt chunks on tensor cores: tiles of consecutive rows of one sequence (a chunk of 200 rows
// after 100 cached positions, cut into 64-row tiles and a tail; a 17-row chunk from position 0),
// listed out of order, and the other rows (decode rows, a short chunk) one by one, in one call,
// against the CPU twin attending every row alone. Head sizes over each of the flash kernel's
// widths (32, 64, 128, 256), one that takes element-wise loads (36), block sizes that cut the
// kernel's key tiles anywhere.
TEST_F(PagedAttentionTest, PromptTilesOnTensorCoresMatchCpu) {
  cuda::CudaContext ctx;
  for (const PagedCase c :
       {PagedCase{32, 8, 128, 16}, PagedCase{16, 4, 64, 5}, PagedCase{6, 6, 40, 3},
        PagedCase{8, 2, 36, 7}, PagedCase{24, 3, 256, 8}, PagedCase{4, 1, 32, 16}}) {
    PagedStep st = make_paged_step(c, /*num_blocks=*/200, /*max_blocks=*/110, {100, 50, 0, 30, 0},
                                   {300, 51, 17, 35, 1}, /*shuffle=*/37, /*seed=*/71);
    // Rows 0-199: sequence 0; 200: sequence 1; 201-217: sequence 2; 218-222: 3; 223: 4.
    ASSERT_EQ(st.rows, 224);
    const std::vector<int32_t> tiles = {201, 17,  2, 0,  64, 64,  0,   164, 192, 8,
                                        0,   292, 0, 64, 0,  100, 128, 64,  0,   228};
    const std::vector<int32_t> rest = {200, 218, 219, 220, 221, 222, 223};
    DevBuf dtiles = upload(tiles), drest = upload(rest);
    cuda::PagedAttentionParams p = st.params;
    p.tiles = dtiles.as<int32_t>();
    p.num_tiles = static_cast<int64_t>(tiles.size()) / 4;
    p.tile_rows = 64;
    p.rest_rows = drest.as<int32_t>();
    p.num_rest = static_cast<int64_t>(rest.size());
    cuda::paged_attention_bf16(p, ctx.stream());
    const std::vector<float> got = download_bf16(st.out().ptr, st.q_n);
    // fp32 softmax and accumulation; the probabilities are rounded to bf16 before P V.
    EXPECT_LT(rel_l2(got, st.ref), 1e-2) << c.tag();
    // Each tiled sequence alone, so an error in one tile is not averaged away.
    const int64_t w = c.heads * c.head_dim;
    for (const auto& [first, rows] : {std::pair<int64_t, int64_t>{0, 200}, {201, 17}}) {
      const std::vector<float> a(got.begin() + first * w, got.begin() + (first + rows) * w);
      const std::vector<float> b(st.ref.begin() + first * w, st.ref.begin() + (first + rows) * w);
      EXPECT_LT(rel_l2(a, b), 1e-2) << c.tag() << " rows from " << first;
    }
    // A tile longer than the kernel's tiles is refused.
    p.tile_rows = 65;
    EXPECT_THROW(cuda::paged_attention_bf16(p, ctx.stream()), Error) << c.tag();
  }
}

TEST_F(PagedAttentionTest, RopeAtAPositionPerRowMatchesCpu) {
  cuda::CudaContext ctx;
  const int64_t T = 5, H = 4, Dh = 64, n = T * H * Dh;
  const std::vector<int32_t> positions = {300, 0, 7, 7, 4095};
  const auto x = round_bf16(rand_vec(n, 64, -2, 2));
  cpu::RopeShape shape{1, T, H, Dh, 0, 1e6};
  shape.positions = positions.data();
  std::vector<float> ref(n);
  cpu::rope_forward<float>(x.data(), shape, ref.data());
  DevBuf dx = upload(to_bf16(x)), dpos = upload(positions), y(n * 2);
  cuda::RopeParams p{1, T, H, Dh, 0, 1e6};
  p.positions = dpos.as<int32_t>();
  cuda::rope_forward_bf16(dx.ptr, y.ptr, p, ctx.stream());
  EXPECT_LT(rel_l2(download_bf16(y.ptr, n), ref), 4e-3);
}

TEST_F(PagedAttentionTest, ScatterAndGatherRowsMatchCpu) {
  cuda::CudaContext ctx;
  const int64_t width = 24, slots = 10;
  const auto rows = round_bf16(rand_vec(3 * width, 65));
  const std::vector<int32_t> where = {7, 1, 4};
  std::vector<float> pool(slots * width, 0.0f);
  cpu::scatter_rows(rows.data(), where.data(), 3, width, slots, pool.data());
  DevBuf drows = upload(to_bf16(rows)), dwhere = upload(where);
  DevBuf dpool = upload(to_bf16(std::vector<float>(slots * width, 0.0f)));
  cuda::scatter_rows_bf16(drows.ptr, dwhere.as<int32_t>(), 3, width, dpool.ptr, ctx.stream());
  EXPECT_EQ(download_bf16(dpool.ptr, slots * width), pool);
  DevBuf back(3 * width * 2);
  cuda::gather_rows_bf16(dpool.ptr, dwhere.as<int32_t>(), 3, width, back.ptr, ctx.stream());
  EXPECT_EQ(download_bf16(back.ptr, 3 * width), rows);
}

// The fused split + RoPE + pool write: bit for bit what the separate RoPE and scatter kernels give
// (the same rotation code), with GQA widths, vectorised (Dh 64) and element-wise (Dh 12) loads, and
// no rotation; the pools' untouched slots stay as they were.
TEST_F(PagedAttentionTest, RopeQkvPagedEqualsRopeAndScatter) {
  cuda::CudaContext ctx;
  for (const int64_t Dh : {int64_t{64}, int64_t{12}})
    for (const double theta : {1e6, 0.0}) {
      const int64_t R = 5, H = 4, KVH = 2, qw = H * Dh, kw = KVH * Dh, slots = 11;
      const std::vector<int32_t> positions = {300, 0, 7, 7, 4095}, where = {10, 3, 0, 6, 2};
      const auto qkv = round_bf16(rand_vec(R * (qw + 2 * kw), 66, -2, 2));
      const auto pool0 = round_bf16(rand_vec(slots * kw, 67));
      DevBuf dqkv = upload(to_bf16(qkv)), dpos = upload(positions), dwhere = upload(where);
      DevBuf q(R * qw * 2), kp = upload(to_bf16(pool0)), vp = upload(to_bf16(pool0));
      cuda::RopeQkvPagedParams p;
      p.qkv = dqkv.ptr;
      p.positions = dpos.as<int32_t>();
      p.slots = dwhere.as<int32_t>();
      p.q = q.ptr;
      p.k_pool = kp.ptr;
      p.v_pool = vp.ptr;
      p.rows = R;
      p.q_width = qw;
      p.kv_width = kw;
      p.head_dim = Dh;
      p.theta = theta;
      cuda::rope_qkv_paged_bf16(p, ctx.stream());
      // The reference: the q, k, v parts split on the host, then the separate kernels.
      std::vector<float> qh(R * qw), kh(R * kw), vh(R * kw);
      for (int64_t r = 0; r < R; ++r) {
        const float* row = &qkv[r * (qw + 2 * kw)];
        std::copy(row, row + qw, &qh[r * qw]);
        std::copy(row + qw, row + qw + kw, &kh[r * kw]);
        std::copy(row + qw + kw, row + qw + 2 * kw, &vh[r * kw]);
      }
      DevBuf rq = upload(to_bf16(qh)), rk = upload(to_bf16(kh)), rv = upload(to_bf16(vh));
      DevBuf rkp = upload(to_bf16(pool0)), rvp = upload(to_bf16(pool0));
      if (theta > 0) {
        cuda::RopeParams rp{1, R, H, Dh, 0, theta};
        rp.positions = dpos.as<int32_t>();
        cuda::rope_forward_bf16(rq.ptr, rq.ptr, rp, ctx.stream());
        rp.num_heads = KVH;
        cuda::rope_forward_bf16(rk.ptr, rk.ptr, rp, ctx.stream());
      }
      cuda::scatter_rows_bf16(rk.ptr, dwhere.as<int32_t>(), R, kw, rkp.ptr, ctx.stream());
      cuda::scatter_rows_bf16(rv.ptr, dwhere.as<int32_t>(), R, kw, rvp.ptr, ctx.stream());
      const std::string what = "Dh " + std::to_string(Dh) + " theta " + std::to_string(theta);
      EXPECT_TRUE(kt::same_bits(kt::download<uint16_t>(q.ptr, R * qw),
                                kt::download<uint16_t>(rq.ptr, R * qw)))
          << what;
      EXPECT_TRUE(kt::same_bits(kt::download<uint16_t>(kp.ptr, slots * kw),
                                kt::download<uint16_t>(rkp.ptr, slots * kw)))
          << what;
      EXPECT_TRUE(kt::same_bits(kt::download<uint16_t>(vp.ptr, slots * kw),
                                kt::download<uint16_t>(rvp.ptr, slots * kw)))
          << what;
    }
}

}  // namespace
}  // namespace moex
