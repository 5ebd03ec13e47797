// Serving ops on the CPU against independent references: paged attention of rows of several
// sequences (shuffled blocks, prefill chunks and single decode rows mixed) against ops::attention
// over each sequence's keys copied out contiguously; scatter/gather against naive copies; RoPE at a
// position per row against RoPE at a start position; bad block tables as clear errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "cpu_kernel_checks.h"
#include "ops/attention.h"
#include "ops/elementwise.h"
#include "ops/paged_attention.h"
#include "ops/rope.h"

namespace moex {
namespace {

Tensor random(const Shape& shape, uint64_t seed) {
  Tensor t = Tensor::empty(shape, DType::kF32);
  for (int64_t i = 0; i < t.numel(); ++i)
    t.data<float>()[i] = 2.0f * philox_uniform(seed, 0x9a, static_cast<uint64_t>(i)) - 1.0f;
  return t;
}

Tensor ints(const std::vector<int32_t>& v, const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::kI32);
  std::copy(v.begin(), v.end(), t.data<int32_t>());
  return t;
}

double max_abs_diff(const float* a, const float* b, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(static_cast<double>(a[i]) - b[i]));
  return m;
}

struct Seq {
  int64_t len;        // positions held after this step
  int64_t first_row;  // first position computed this step
  std::vector<int32_t> blocks;
};

TEST(PagedAttention, EqualsContiguousAttentionPerSequence) {
  const int64_t H = 4, KVH = 2, Dh = 8, bs = 4, num_blocks = 12, kd = KVH * Dh;
  // Blocks handed out out of order, as a pool does after frees.
  std::vector<Seq> seqs = {{7, 4, {5, 0}}, {12, 11, {9, 2, 7}}, {5, 0, {11, 3}}};
  const int64_t max_blocks = 3;
  std::vector<int32_t> table(seqs.size() * max_blocks, -1), row_seq, row_pos;
  for (size_t s = 0; s < seqs.size(); ++s) {
    std::copy(seqs[s].blocks.begin(), seqs[s].blocks.end(), table.begin() + s * max_blocks);
    for (int64_t p = seqs[s].first_row; p < seqs[s].len; ++p) {
      row_seq.push_back(static_cast<int32_t>(s));
      row_pos.push_back(static_cast<int32_t>(p));
    }
  }
  const int64_t R = static_cast<int64_t>(row_seq.size());
  const Tensor k_pool = random({num_blocks, bs, KVH, Dh}, 1),
               v_pool = random({num_blocks, bs, KVH, Dh}, 2);
  const Tensor q = random({R, H, Dh}, 3);
  Tensor out = Tensor::empty({R, H, Dh}, DType::kF32);
  ops::paged_attention(q, k_pool, v_pool, ints(table, {3, max_blocks}), ints(row_seq, {R}),
                       ints(row_pos, {R}), out);

  int64_t r0 = 0;
  for (const Seq& s : seqs) {
    const int64_t m = s.len - s.first_row;
    Tensor k = Tensor::empty({1, s.len, KVH, Dh}, DType::kF32), v = k.clone();
    for (int64_t p = 0; p < s.len; ++p) {
      const int64_t slot = s.blocks[p / bs] * bs + p % bs;
      std::copy_n(k_pool.data<float>() + slot * kd, kd, k.data<float>() + p * kd);
      std::copy_n(v_pool.data<float>() + slot * kd, kd, v.data<float>() + p * kd);
    }
    Tensor qs = Tensor::empty({1, m, H, Dh}, DType::kF32), ref = qs.clone();
    std::copy_n(q.data<float>() + r0 * H * Dh, m * H * Dh, qs.data<float>());
    Tensor saved =
        Tensor::empty(ops::attention_saved_shape(Device::cpu(), 1, H, m, s.len), DType::kF32);
    ops::attention(qs, k, v, s.first_row, ref, saved);
    EXPECT_LT(max_abs_diff(out.data<float>() + r0 * H * Dh, ref.data<float>(), m * H * Dh), 1e-5)
        << "sequence of " << s.len << " positions";
    r0 += m;
  }
}

TEST(PagedAttention, ScatterAndGatherRowsMoveTheNamedRows) {
  const Tensor rows = random({3, 5}, 4);
  Tensor pool = Tensor::zeros({6, 5}, DType::kF32);
  ops::scatter_rows(rows, ints({4, 0, 2}, {3}), pool);
  const int32_t where[] = {4, 0, 2};
  for (int r = 0; r < 3; ++r)
    EXPECT_EQ(max_abs_diff(pool.data<float>() + where[r] * 5, rows.data<float>() + r * 5, 5), 0);
  EXPECT_EQ(
      max_abs_diff(pool.data<float>() + 1 * 5, Tensor::zeros({5}, DType::kF32).data<float>(), 5), 0)
      << "rows not named stay untouched";
  Tensor back = Tensor::empty({2, 5}, DType::kF32);
  ops::gather_rows(pool, ints({2, 4}, {2}), back);
  EXPECT_EQ(max_abs_diff(back.data<float>(), rows.data<float>() + 2 * 5, 5), 0);
  EXPECT_EQ(max_abs_diff(back.data<float>() + 5, rows.data<float>(), 5), 0);
  EXPECT_THROW(ops::scatter_rows(rows, ints({4, 6, 2}, {3}), pool), Error);
  EXPECT_THROW(ops::gather_rows(pool, ints({-1, 0}, {2}), back), Error);
}

TEST(PagedAttention, RopeAtAPositionPerRowEqualsRopeAtAStart) {
  const int64_t H = 3, Dh = 8;
  const Tensor x = random({1, 4, H, Dh}, 5);
  const std::vector<int32_t> positions = {9, 0, 3, 17};
  Tensor y = Tensor::empty(x.shape(), DType::kF32);
  ops::rope(x, ints(positions, {4}), 10000.0, y);
  for (int64_t t = 0; t < 4; ++t) {
    Tensor one = Tensor::empty({1, 1, H, Dh}, DType::kF32), ref = one.clone();
    std::copy_n(x.data<float>() + t * H * Dh, H * Dh, one.data<float>());
    ops::rope(one, positions[t], 10000.0, ref);
    EXPECT_EQ(max_abs_diff(y.data<float>() + t * H * Dh, ref.data<float>(), H * Dh), 0)
        << "row " << t;
  }
}

// The fused split + RoPE + pool write against the unfused ops: copy_columns, rope at a position per
// row, scatter_rows; bit for bit, with and without rotation; slots outside the pool are errors.
TEST(PagedAttention, WritePagedQkvEqualsSplitRopeAndScatter) {
  const int64_t R = 4, H = 4, KVH = 2, Dh = 8, qw = H * Dh, kw = KVH * Dh, slots = 9;
  const Tensor qkv = random({R, qw + 2 * kw}, 7);
  const Tensor pos = ints({9, 0, 3, 17}, {R}), where = ints({8, 2, 0, 5}, {R});
  for (const double theta : {10000.0, 0.0}) {
    Tensor q = Tensor::empty({1, R, H, Dh}, DType::kF32);
    Tensor k_pool = random({3, 3, KVH, Dh}, 8), v_pool = random({3, 3, KVH, Dh}, 9);
    Tensor q_ref = q.clone(), k_ref = k_pool.clone(), v_ref = v_pool.clone();
    ops::write_paged_qkv(qkv, Dh, pos, theta, where, q, k_pool, v_pool);
    Tensor k = Tensor::empty({1, R, KVH, Dh}, DType::kF32), v = k.clone();
    ops::copy_columns(qkv, 0, q_ref.view({R, qw}), 0, qw);
    ops::copy_columns(qkv, qw, k.view({R, kw}), 0, kw);
    ops::copy_columns(qkv, qw + kw, v.view({R, kw}), 0, kw);
    if (theta > 0) {
      ops::rope(q_ref, pos, theta, q_ref);
      ops::rope(k, pos, theta, k);
    }
    ops::scatter_rows(k.view({R, kw}), where, k_ref.view({slots, kw}));
    ops::scatter_rows(v.view({R, kw}), where, v_ref.view({slots, kw}));
    EXPECT_EQ(max_abs_diff(q.data<float>(), q_ref.data<float>(), q.numel()), 0) << theta;
    EXPECT_EQ(max_abs_diff(k_pool.data<float>(), k_ref.data<float>(), k_pool.numel()), 0) << theta;
    EXPECT_EQ(max_abs_diff(v_pool.data<float>(), v_ref.data<float>(), v_pool.numel()), 0) << theta;
    testing::expect_error_naming(
        [&] {
          ops::write_paged_qkv(qkv, Dh, pos, theta, ints({8, 2, 9, 5}, {R}), q, k_pool, v_pool);
        },
        {"write_paged_qkv", "slot 9", "pool of 9"});
  }
}

TEST(PagedAttention, BadBlockTablesAreClearErrors) {
  const Tensor table = ints({0, 1, 7, -1}, {2, 2});
  auto message = [&](const std::vector<int32_t>& seq, const std::vector<int32_t>& pos) {
    try {
      const int64_t n = static_cast<int64_t>(seq.size());
      ops::check_paged_rows(table, ints(seq, {n}), ints(pos, {n}), /*block_size=*/4,
                            /*num_blocks=*/4);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message({0, 0}, {0, 7}), "no error");
  EXPECT_NE(message({1}, {0}).find("block 0 is 7, outside the pool of 4"), std::string::npos);
  EXPECT_NE(message({0}, {8}).find("past its block table"), std::string::npos);
  EXPECT_NE(message({2}, {0}).find("names sequence 2 of 2"), std::string::npos);
}

// The GPU's tile plan against the properties it promises, on steps of prompt chunks and decode
// rows (runs split by a new sequence or by a gap in positions): every row lies in exactly one
// tile or in the rest; a tile is at most kPagedTileRows consecutive rows of one sequence at
// consecutive positions, cut from a run of at least kPagedTileMinRows; a rest row's run is
// shorter; tiles come with the most keys first.
TEST(PagedAttention, TilePlanCoversEveryRowOnce) {
  const int64_t min_run = ops::kPagedTileMinRows, tile = ops::kPagedTileRows;
  // Runs {sequence, first position, rows}; neighbouring runs of one sequence leave a gap.
  const std::vector<std::vector<std::array<int32_t, 3>>> steps = {
      {{0, 0, 1}, {1, 7, 1}},  // decode rows only: no plan
      {{0, 100, 200}, {1, 50, 1}, {2, 0, 17}, {3, 30, static_cast<int32_t>(min_run) - 1}},
      {{0, 0, static_cast<int32_t>(min_run)}, {0, 20, 64}, {1, 3, 129}, {2, 9, 1}},
  };
  for (size_t step = 0; step < steps.size(); ++step) {
    std::vector<int32_t> seq, pos, run_len;  // per row; run_len: the rows of the row's run
    for (const auto& run : steps[step])
      for (int32_t t = 0; t < run[2]; ++t) {
        seq.push_back(run[0]);
        pos.push_back(run[1] + t);
        run_len.push_back(run[2]);
      }
    const int64_t rows = static_cast<int64_t>(seq.size());
    const ops::PagedTilePlan plan = ops::plan_paged_tiles(seq.data(), pos.data(), rows);
    const bool any_long =
        std::any_of(run_len.begin(), run_len.end(), [&](int32_t n) { return n >= min_run; });
    ASSERT_EQ(plan.tiles.empty(), !any_long) << "step " << step;
    if (plan.tiles.empty()) {
      EXPECT_TRUE(plan.rest.empty());
      continue;
    }
    ASSERT_EQ(plan.tiles.size() % ops::kPagedTileWords, 0u);
    std::vector<int> seen(rows, 0);
    int64_t last_keys = INT64_MAX;
    for (size_t t = 0; t < plan.tiles.size(); t += ops::kPagedTileWords) {
      const int32_t first = plan.tiles[t], n = plan.tiles[t + 1];
      ASSERT_TRUE(n >= 1 && n <= tile && first >= 0 && first + n <= rows) << "tile " << t;
      EXPECT_EQ(plan.tiles[t + 2], seq[first]);
      EXPECT_EQ(plan.tiles[t + 3], pos[first]);
      for (int32_t r = first; r < first + n; ++r) {
        ++seen[r];
        EXPECT_EQ(seq[r], seq[first]);
        EXPECT_EQ(pos[r], pos[first] + (r - first));
        EXPECT_GE(run_len[r], min_run);
      }
      const int64_t keys = int64_t{pos[first]} + n;
      EXPECT_LE(keys, last_keys) << "tiles with the most keys first";
      last_keys = keys;
    }
    for (const int32_t r : plan.rest) {
      ASSERT_TRUE(r >= 0 && r < rows);
      ++seen[r];
      EXPECT_LT(run_len[r], min_run) << "row " << r;
    }
    EXPECT_TRUE(std::is_sorted(plan.rest.begin(), plan.rest.end()));
    for (int64_t r = 0; r < rows; ++r) EXPECT_EQ(seen[r], 1) << "step " << step << " row " << r;
  }
}

// The tiles only choose the GPU's kernels: on the CPU the op gives the same bits with or without
// them, and refuses a plan the GPU could not run (the GPU trusts it): a malformed tile list, a
// tile whose rows are not its sequence's consecutive positions, a row covered twice or not at
// all, a tile over kPagedTileRows rows.
TEST(PagedAttention, TilePlansAreCheckedOnTheCpu) {
  const int64_t heads = 4, kv_heads = 2, dh = 8, bs = 4, num_blocks = 30, rows = 100;
  std::vector<int32_t> table(25), seq(rows, 0), pos(rows);
  for (int32_t b = 0; b < 25; ++b) table[b] = (b * 7) % num_blocks;  // one sequence, shuffled
  std::iota(pos.begin(), pos.end(), 0);
  const Tensor q = random({rows, heads, dh}, 1), k = random({num_blocks, bs, kv_heads, dh}, 2),
               v = random({num_blocks, bs, kv_heads, dh}, 3);
  const Tensor tables = ints(table, {1, 25}), row_seq = ints(seq, {rows}),
               row_pos = ints(pos, {rows});
  const ops::PagedTilePlan plan = ops::plan_paged_tiles(seq.data(), pos.data(), rows);
  ASSERT_EQ(plan.tiles.size(), 8u);  // 64 + 36 rows
  auto tiles_of = [](const std::vector<int32_t>& t) {
    return ints(t, {static_cast<int64_t>(t.size()) / 4, 4});
  };
  auto rest_of = [](const std::vector<int32_t>& r) {
    return ints(r, {static_cast<int64_t>(r.size())});
  };
  Tensor plain = Tensor::empty(q.shape(), DType::kF32),
         tiled = Tensor::empty(q.shape(), DType::kF32);
  ops::paged_attention(q, k, v, tables, row_seq, row_pos, plain);
  ops::paged_attention(q, k, v, tables, row_seq, row_pos, tiled, tiles_of(plan.tiles),
                       rest_of(plan.rest));
  EXPECT_EQ(max_abs_diff(plain.data<float>(), tiled.data<float>(), q.numel()), 0.0);
  auto message = [&](const std::vector<int32_t>& t, const std::vector<int32_t>& rest) {
    try {
      ops::paged_attention(q, k, v, tables, row_seq, row_pos, tiled, tiles_of(t), rest_of(rest));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message({0, 64, 0, 0, 64, 36, 0, 64}, {}), "no error");
  EXPECT_NE(message({0, 64, 0, 0, 64, 36, 0, 65}, {}).find("tile 1 says row 64 is position 65"),
            std::string::npos);
  EXPECT_NE(message({0, 64, 0, 0, 64, 36, 0, 64}, {3}).find("row 3 is in 2"), std::string::npos);
  EXPECT_NE(message({0, 64, 0, 0, 64, 35, 0, 64}, {}).find("row 99 is in 0"), std::string::npos);
  EXPECT_NE(message({0, 65, 0, 0, 65, 35, 0, 65}, {}).find("(at most 64)"), std::string::npos);
  EXPECT_THROW(ops::paged_attention(q, k, v, tables, row_seq, row_pos, tiled, tiles_of(plan.tiles),
                                    Tensor()),
               Error);
  EXPECT_THROW(ops::paged_attention(q, k, v, tables, row_seq, row_pos, tiled,
                                    ints(plan.tiles, {static_cast<int64_t>(plan.tiles.size())}),
                                    rest_of(plan.rest)),
               Error);
}

}  // namespace
}  // namespace moex
