// Device sampling (cuda::sample_rows_f32) against its CPU twin, token for token: random rows of
// LM-head widths (32000 and 152064) with greedy and sampled rows mixed in one call (temperature
// small to large, top_k 1, mid, either side of the kernel's 4096 shared-memory candidates and past
// the vocabulary, top_p tiny to 1), rows with many tied logits (the lower id first), a -0 / +0
// tie, rows of -inf and of NaN (greedy and sampled), parameters at an odd word (4-byte aligned
// only), a NaN among finite logits, and a CUDA graph replayed with new parameters. Outputs start
// poisoned. Both twins compute the same fixed-point weights bit for bit and sum them exactly
// (core/sampling_math.h), so every token must be the CPU's.
#include "cpu/sample.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <initializer_list>
#include <vector>

#include "cuda/graph.h"
#include "cuda/sample.h"
#include "kernel_test_util.h"

namespace moex {
namespace {

// The layout of ops::SampleParams (ops/sample.h), 10 words a row.
struct Params {
  double temperature = 0.0, top_p = 1.0;
  int64_t top_k = 0;
  uint64_t seed = 0, draw = 0;
};
static_assert(sizeof(Params) == 40, "10 words");

Params make(double temperature, int64_t top_k, double top_p, uint64_t seed, uint64_t draw) {
  Params p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.seed = seed;
  p.draw = draw;
  return p;
}

// `lead` words before the first row's (to test unaligned parameters).
std::vector<int32_t> words(const std::vector<Params>& ps, size_t lead = 0) {
  std::vector<int32_t> w(lead + ps.size() * 10, 0);
  std::memcpy(w.data() + lead, ps.data(), ps.size() * sizeof(Params));
  return w;
}

// A spread of parameters, row r of rows (every fifth row greedy).
std::vector<Params> spread(int64_t rows, int64_t vocab, uint64_t seed) {
  const double temperatures[] = {0.0, 0.03, 0.6, 1.0, 1.7, 50.0};
  const int64_t top_ks[] = {0, 1, 7, 100, 4096, 4097, vocab - 1, vocab, vocab + 5};
  // Not round fractions: with tied logits at a tiny temperature the nucleus is a count of equal
  // weights, and top_p = 0.5 of an even count would sit on a boundary.
  const double top_ps[] = {1.0, 0.9137, 0.4829, 0.1173, 1e-9};
  std::vector<Params> ps;
  for (int64_t r = 0; r < rows; ++r)
    ps.push_back(r % 5 == 0 ? Params{}
                            : make(temperatures[r % 6], top_ks[(r / 2) % 9], top_ps[(r / 3) % 5],
                                   seed + r % 4, static_cast<uint64_t>(r * 13)));
  return ps;
}

std::vector<int32_t> on_cpu(const std::vector<float>& x, int64_t rows, int64_t cols,
                            const std::vector<Params>& ps) {
  std::vector<int32_t> out(rows, -1);
  const std::vector<int32_t> w = words(ps);
  cpu::sample_rows(x.data(), rows, cols, w.data(), out.data());
  return out;
}

// chunks: the first two passes' blocks a row (0: the kernel's choice).
std::vector<int32_t> on_gpu(const cuda::CudaContext& ctx, const std::vector<float>& x, int64_t rows,
                            int64_t cols, const std::vector<Params>& ps, size_t lead = 0,
                            int chunks = 0) {
  kt::DevBuf dx = kt::upload(x), dp = kt::upload(words(ps, lead)), out(rows * 4);
  kt::DevBuf ws(cuda::sample_rows_workspace_bytes(rows));
  ws.poison();  // every word the passes read must be written first
  cuda::sample_rows_f32(dx.as<float>(), rows, cols, dp.as<int32_t>() + lead, ws.ptr,
                        out.as<int32_t>(), ctx.stream(), chunks);
  return kt::download<int32_t>(out.ptr, rows);
}

// Rows rounded to a few levels: most logits tie with many others.
std::vector<float> tied(std::vector<float> x) {
  for (float& v : x) v = std::round(v);
  return x;
}

class SampleTest : public kt::GpuKernel {};

// Random rows of `cols` logits under spread()'s parameters, without and with many tied logits:
// the GPU's token for each row, split over each count of `chunk_counts` (0: the kernel's choice),
// must be the CPU's.
void expect_cpu_tokens(const cuda::CudaContext& ctx, int64_t rows, int64_t cols,
                       uint64_t params_seed, uint64_t logits_seed,
                       std::initializer_list<int> chunk_counts) {
  const std::vector<Params> ps = spread(rows, cols, params_seed);
  for (const bool ties : {false, true}) {
    std::vector<float> x = kt::rand_vec(rows * cols, logits_seed, -6, 6);
    if (ties) x = tied(x);
    const std::vector<int32_t> want = on_cpu(x, rows, cols, ps);
    for (const int chunks : chunk_counts) {
      const std::vector<int32_t> got = on_gpu(ctx, x, rows, cols, ps, 0, chunks);
      for (int64_t r = 0; r < rows; ++r)
        EXPECT_EQ(got[r], want[r])
            << "cols " << cols << (ties ? " tied" : "") << ", " << chunks << " chunks, row " << r
            << ": T " << ps[r].temperature << " top_k " << ps[r].top_k << " top_p " << ps[r].top_p;
    }
  }
}

TEST_F(SampleTest, MatchesCpuOnMixedRows) {
  cuda::CudaContext ctx;
  for (const int64_t cols : {int64_t{32000}, int64_t{152064}})
    expect_cpu_tokens(ctx, 90, cols, 41, 72 + cols, {0});
}

// The chunk counts the shapes above do not reach: one block a row, the most (32), and narrow rows
// that leave chunks empty (70 columns in 32 chunks of 4: chunks 18 to 31 hold nothing, and their
// extremes and histogram counts must not disturb the row's).
TEST_F(SampleTest, ForcedChunkCountsMatchTheCpu) {
  cuda::CudaContext ctx;
  for (const int64_t cols : {int64_t{32000}, int64_t{70}})
    expect_cpu_tokens(ctx, 30, cols, 43, 91 + cols, {1, 2, 31, 32});
}

TEST_F(SampleTest, SpecialRowsAndUnalignedParameters) {
  cuda::CudaContext ctx;
  const int64_t rows = 10, cols = 5001;  // odd: rows at every 4-byte alignment, and a tail
  std::vector<float> x = kt::rand_vec(rows * cols, 73, -3, 3);
  x[0 * cols + 9] = -0.0f;  // the largest logit as -0 then +0: equal, 9 first
  x[0 * cols + 30] = 0.0f;
  for (int64_t c = 0; c < cols; ++c)
    if (x[c] > 0) x[c] = -x[c];
  for (int64_t c = 0; c < cols; ++c) x[1 * cols + c] = -INFINITY;  // greedy: 0
  x[2 * cols + cols - 1] = 9.0f;                                   // the last column
  x[3 * cols + 100] = x[3 * cols + 4000] = 9.0f;                   // a cold tie
  for (int64_t c = 0; c < cols; ++c) {
    x[6 * cols + c] = NAN;        // sampled: every weight 0, so the first token
    x[7 * cols + c] = -INFINITY;  // sampled: all tied at the largest logit
  }
  for (const int64_t r : {8, 9}) {  // NaNs among finite logits: passed over, weight 0
    x[r * cols] = NAN;
    x[r * cols + 77] = NAN;
    x[r * cols + 78] = 20.0f;
  }
  const std::vector<Params> ps = {Params{},
                                  Params{},
                                  make(1.0, 1, 1, 3, 5),
                                  make(1e-6, 0, 1, 3, 6),
                                  make(0.5, 2, 1, 3, 7),
                                  make(2.0, 0, 0.3, 3, 8),
                                  make(1.0, 0, 0.5, 3, 9),
                                  make(1.0, 0, 0.5, 3, 10),
                                  Params{},
                                  make(3.0, 0, 1.0, 3, 11)};
  const std::vector<int32_t> want = on_cpu(x, rows, cols, ps);
  EXPECT_EQ(want[0], 9);
  EXPECT_EQ(want[1], 0);
  EXPECT_EQ(want[2], cols - 1);
  EXPECT_EQ(want[6], 0);
  EXPECT_LT(want[7], (cols + 1) / 2);  // the nucleus: the first half, in id order
  EXPECT_EQ(want[8], 78);
  EXPECT_TRUE(want[9] != 0 && want[9] != 77) << want[9];
  for (size_t lead : {size_t{0}, size_t{1}})
    EXPECT_EQ(on_gpu(ctx, x, rows, cols, ps, lead), want) << "lead words " << lead;
}

TEST_F(SampleTest, ReplaysInACudaGraphWithNewParameters) {
  cuda::CudaContext ctx;
  const int64_t rows = 8, cols = 32000;
  const std::vector<float> x = kt::rand_vec(rows * cols, 74, -2, 2);
  std::vector<Params> ps = spread(rows, cols, 5);
  kt::DevBuf dx = kt::upload(x), dp = kt::upload(words(ps)), out(rows * 4);
  kt::DevBuf ws(cuda::sample_rows_workspace_bytes(rows));
  cuda::begin_capture(ctx.stream());
  cuda::sample_rows_f32(dx.as<float>(), rows, cols, dp.as<int32_t>(), ws.ptr, out.as<int32_t>(),
                        ctx.stream());
  cudaGraphExec_t exec = cuda::end_capture(ctx.stream(), true);
  for (uint64_t step = 0; step < 4; ++step) {
    for (int64_t r = 0; r < rows; ++r) ps[r].draw = step;  // the next draw of every row
    kt::upload_to(dp.ptr, words(ps));
    out.poison();
    cuda::launch_graph(exec, ctx.stream());
    EXPECT_EQ(kt::download<int32_t>(out.ptr, rows), on_cpu(x, rows, cols, ps)) << "step " << step;
  }
  cuda::destroy_graph(exec);
}

// The serving shapes: 64 rows of Qwen's vocabulary, and one row of Mixtral's (batch-1 decoding).
TEST_F(SampleTest, ReportsTime) {
  cuda::CudaContext ctx;
  for (const auto& [rows, cols] : {std::pair<int64_t, int64_t>{64, 152064}, {1, 32000}}) {
    kt::DevBuf dx = kt::dev_rand_f32(rows * cols, 75, -8, 8), out(rows * 4);
    kt::DevBuf ws(cuda::sample_rows_workspace_bytes(rows));
    for (const Params& p :
         {Params{}, make(0.8, 0, 1.0, 1, 0), make(1.0, 0, 0.95, 1, 0), make(0.8, 50, 0.9, 1, 0)}) {
      kt::DevBuf dp = kt::upload(words(std::vector<Params>(rows, p)));
      char what[96];
      std::snprintf(what, sizeof(what), "sample_rows %ldx%ld T %.1f top_k %ld top_p %.2f",
                    static_cast<long>(rows), static_cast<long>(cols), p.temperature,
                    static_cast<long>(p.top_k), p.top_p);
      kt::report_bandwidth(what, rows * cols * 4.0, ctx.stream(), [&] {
        cuda::sample_rows_f32(dx.as<float>(), rows, cols, dp.as<int32_t>(), ws.ptr,
                              out.as<int32_t>(), ctx.stream());
      });
    }
  }
}

}  // namespace
}  // namespace moex
