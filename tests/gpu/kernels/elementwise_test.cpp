// Elementwise kernels against host references: odd sizes and unaligned pointers (scalar paths),
// aliasing, += semantics on random initial values, fills leaving neighbours untouched, and
// bit-identical reruns of the deterministic reductions (column_sum_bf16, sum_f32).
#include <gtest/gtest.h>

#include <numeric>
#include <string>
#include <vector>

#include "cuda/elementwise.h"
#include "kernel_test_util.h"

namespace moex {
namespace {

using kt::DevBuf;
using kt::download;
using kt::download_bf16;
using kt::rand_vec;
using kt::rel_l2;
using kt::round_bf16;
using kt::to_bf16;
using kt::upload;

class ElementwiseTest : public kt::GpuKernel {};

std::vector<float> slice(const std::vector<float>& v, size_t off, size_t n) {
  return std::vector<float>(v.begin() + off, v.begin() + off + n);
}

TEST_F(ElementwiseTest, AddBf16MatchesHost) {
  cuda::CudaContext ctx;
  for (int64_t n : {1, 7, 8, 1000, 4099}) {
    for (int64_t off : {0, 1}) {  // off 1: buffers not 16-byte aligned
      const auto a = round_bf16(rand_vec(n + off, 60 + n));
      const auto b = round_bf16(rand_vec(n + off, 61 + n));
      std::vector<float> ref(n);
      for (int64_t i = 0; i < n; ++i) ref[i] = a[off + i] + b[off + i];
      DevBuf da = upload(to_bf16(a)), db = upload(to_bf16(b)), y((n + off) * 2);
      auto at = [&](const DevBuf& d) { return d.as<uint16_t>() + off; };
      cuda::add_bf16(at(da), at(db), at(y), n, ctx.stream());
      const std::string tag = "n " + std::to_string(n) + " offset " + std::to_string(off);
      EXPECT_LT(rel_l2(download_bf16(at(y), n), ref), 4e-3) << tag;
      cuda::add_bf16(at(da), at(db), at(da), n, ctx.stream());  // y aliases a
      EXPECT_LT(rel_l2(download_bf16(at(da), n), ref), 4e-3) << tag << " aliased";
    }
  }
}

TEST_F(ElementwiseTest, AddF32Accumulates) {
  cuda::CudaContext ctx;
  for (int64_t n : {1, 5, 1000, 4099}) {
    for (int64_t off : {0, 1}) {
      const auto x = rand_vec(n + off, 70 + n), y0 = rand_vec(n + off, 71 + n);
      DevBuf dx = upload(x), dy = upload(y0);
      cuda::add_f32(dx.as<float>() + off, dy.as<float>() + off, n, ctx.stream());
      const auto got = download<float>(dy.as<float>() + off, n);
      for (int64_t i = 0; i < n; ++i)
        ASSERT_EQ(got[i], x[off + i] + y0[off + i]) << "n " << n << " offset " << off;
    }
  }
}

TEST_F(ElementwiseTest, AddBiasMatchesHost) {
  cuda::CudaContext ctx;
  struct Case {
    int64_t rows, cols;
  };
  for (const Case c : {Case{1, 8}, Case{3, 24}, Case{5, 13}, Case{1000, 1024}, Case{7, 1000}}) {
    const auto y0 = round_bf16(rand_vec(c.rows * c.cols, 80 + c.cols));
    const auto bias = round_bf16(rand_vec(c.cols, 81 + c.cols));
    std::vector<float> ref(y0);
    for (int64_t r = 0; r < c.rows; ++r)
      for (int64_t k = 0; k < c.cols; ++k) ref[r * c.cols + k] += bias[k];
    DevBuf dy = upload(to_bf16(y0)), db = upload(to_bf16(bias));
    cuda::add_bias_bf16(dy.ptr, db.ptr, c.rows, c.cols, ctx.stream());
    EXPECT_LT(rel_l2(download_bf16(dy.ptr, c.rows * c.cols), ref), 4e-3)
        << "rows " << c.rows << " cols " << c.cols;
  }
}

std::vector<float> run_column_sum(const std::vector<float>& dy, int64_t rows, int64_t cols,
                                  const std::vector<float>& db0, cudaStream_t s) {
  DevBuf d = upload(to_bf16(dy)), db = upload(db0);
  DevBuf ws(cuda::column_sum_workspace_bytes(rows, cols));
  cuda::column_sum_bf16(d.ptr, rows, cols, db.as<float>(), ws.ptr, s);
  return download<float>(db.ptr, cols);
}

TEST_F(ElementwiseTest, ColumnSumAccumulatesAndIsDeterministic) {
  cuda::CudaContext ctx;
  struct Case {
    int64_t rows, cols;
  };
  for (const Case c : {Case{1, 8}, Case{3, 13}, Case{1000, 1024}, Case{5000, 24}, Case{63, 1000},
                       Case{129, 2048}}) {
    const auto dy = round_bf16(rand_vec(c.rows * c.cols, 90 + c.rows));
    const auto db0 = rand_vec(c.cols, 91 + c.cols);
    std::vector<double> ref(c.cols);
    for (int64_t k = 0; k < c.cols; ++k) ref[k] = db0[k];
    for (int64_t r = 0; r < c.rows; ++r)
      for (int64_t k = 0; k < c.cols; ++k) ref[k] += dy[r * c.cols + k];
    const std::vector<float> ref_f(ref.begin(), ref.end());
    const auto a = run_column_sum(dy, c.rows, c.cols, db0, ctx.stream());
    const auto b = run_column_sum(dy, c.rows, c.cols, db0, ctx.stream());
    const std::string tag = "rows " + std::to_string(c.rows) + " cols " + std::to_string(c.cols);
    EXPECT_LT(rel_l2(a, ref_f), 1e-5) << tag;
    EXPECT_TRUE(kt::same_bits(a, b)) << tag << ": two runs differ";
  }
}

TEST_F(ElementwiseTest, FillsWriteExactlyTheirRange) {
  cuda::CudaContext ctx;
  for (int64_t n : {1, 3, 8, 1001, 4099}) {
    for (int64_t off : {0, 1, 3}) {
      const size_t total = n + off + 5;
      DevBuf b32(total * 4), b16(total * 2);  // poisoned 0xFF
      cuda::fill_u32(b32.as<uint32_t>() + off, 0x12345678u, n, ctx.stream());
      cuda::fill_u16(b16.as<uint16_t>() + off, 0x3f80u, n, ctx.stream());
      const auto v32 = download<uint32_t>(b32.ptr, total);
      const auto v16 = download<uint16_t>(b16.ptr, total);
      for (size_t i = 0; i < total; ++i) {
        const bool inside = i >= size_t(off) && i < size_t(off + n);
        ASSERT_EQ(v32[i], inside ? 0x12345678u : 0xFFFFFFFFu) << "u32 n " << n << " i " << i;
        ASSERT_EQ(v16[i], inside ? 0x3f80u : 0xFFFFu) << "u16 n " << n << " i " << i;
      }
    }
  }
}

TEST_F(ElementwiseTest, SumF32MatchesHostAndIsDeterministic) {
  cuda::CudaContext ctx;
  for (int64_t n : {1, 1000, 8192, 1000003}) {
    for (int64_t off : {0, 1}) {
      const auto x = rand_vec(n + off, 100 + n, -1.0f, 3.0f);
      double ref = 0;
      for (int64_t i = 0; i < n; ++i) ref += x[off + i];
      DevBuf dx = upload(x), ws(cuda::sum_workspace_bytes(n)), out(4);
      cuda::sum_f32(dx.as<float>() + off, n, out.as<float>(), ws.ptr, ctx.stream());
      const auto a = download<float>(out.ptr, 1);
      out.poison();
      cuda::sum_f32(dx.as<float>() + off, n, out.as<float>(), ws.ptr, ctx.stream());
      const auto b = download<float>(out.ptr, 1);
      const std::string tag = "n " + std::to_string(n) + " offset " + std::to_string(off);
      EXPECT_NEAR(a[0], ref, 1e-6 * std::abs(ref) + 1e-6) << tag;
      EXPECT_TRUE(kt::same_bits(a, b)) << tag << ": two runs differ";
    }
  }
}

TEST_F(ElementwiseTest, Bandwidth) {
  cuda::CudaContext ctx;
  const auto s = ctx.stream();
  for (int64_t dim : {1024, 2048}) {
    const int64_t n = 8192 * dim;
    DevBuf a = kt::dev_rand_bf16(n, 111), b = kt::dev_rand_bf16(n, 112), y(n * 2);
    kt::report_bandwidth(("add_bf16 8192x" + std::to_string(dim)).c_str(), 6.0 * n, s,
                         [&] { cuda::add_bf16(a.ptr, b.ptr, y.ptr, n, s); });
    DevBuf bias = kt::dev_rand_bf16(dim, 113), dbias(dim * 4);
    DevBuf ws(cuda::column_sum_workspace_bytes(8192, dim));
    CUDA_CHECK(cudaMemset(dbias.ptr, 0, dim * 4));
    kt::report_bandwidth(("add_bias_bf16 8192x" + std::to_string(dim)).c_str(), 4.0 * n, s,
                         [&] { cuda::add_bias_bf16(y.ptr, bias.ptr, 8192, dim, s); });
    kt::report_bandwidth(("column_sum_bf16 8192x" + std::to_string(dim)).c_str(), 2.0 * n, s,
                         [&] { cuda::column_sum_bf16(a.ptr, 8192, dim, dbias.as<float>(), ws.ptr, s); });
  }
  const int64_t n = int64_t{64} << 20;
  DevBuf x = kt::dev_rand_f32(n, 114), y(n * 4), ws(cuda::sum_workspace_bytes(n)), out(4);
  CUDA_CHECK(cudaMemset(y.ptr, 0, n * 4));
  kt::report_bandwidth("add_f32 64M", 12.0 * n, s,
                       [&] { cuda::add_f32(x.as<float>(), y.as<float>(), n, s); });
  kt::report_bandwidth("sum_f32 64M", 4.0 * n, s,
                       [&] { cuda::sum_f32(x.as<float>(), n, out.as<float>(), ws.ptr, s); });
  kt::report_bandwidth("fill_u32 64M", 4.0 * n, s,
                       [&] { cuda::fill_u32(y.ptr, 0u, n, s); });
}

}  // namespace
}  // namespace moex
