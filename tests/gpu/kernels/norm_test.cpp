// LayerNorm / RMSNorm kernels against cpu/norm.h in fp32 on the same bf16-rounded inputs: every
// row-group configuration (dims 8 .. 8192 vectorized, odd dims scalar), += semantics of the
// parameter gradients on random initial values, dx aliasing dy, and bit-identical reruns.
#include "cpu/norm.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cuda/elementwise.h"
#include "cuda/norm.h"
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

class NormTest : public kt::GpuKernel {};

struct NormCase {
  int64_t rows, dim;
};
// Dims reach every dispatch branch: 16-byte groups of 4..32 lanes, 32 lanes x 4, blocks of
// 64..256 threads, and the scalar paths (13, 100: warp; 1001: block). Rows 5000 at dim 1024 make
// each backward block loop over several row groups.
const NormCase kCases[] = {{1, 8},    {3, 16},   {37, 24},  {1000, 64}, {17, 128},
                           {9, 256},  {7, 1000}, {5000, 1024}, {3, 2048}, {5, 4096},
                           {2, 8192}, {3, 13},   {9, 100},  {4, 1001},  {1, 1024}};

struct NormResult {
  std::vector<float> y, mean, rstd, dx, dw, db;
};

// Runs forward then backward on the GPU; dw/db start from dw0/db0. alias: dx written over dy.
NormResult run_gpu(bool rms, bool bias, int64_t rows, int64_t dim, const std::vector<float>& x,
                   const std::vector<float>& w, const std::vector<float>& b,
                   const std::vector<float>& dy, const std::vector<float>& dw0,
                   const std::vector<float>& db0, bool alias, cudaStream_t stream) {
  const size_t n = rows * dim;
  DevBuf dx_in = upload(to_bf16(x)), dw_in = upload(to_bf16(w)), db_in = upload(to_bf16(b));
  DevBuf ddy = upload(to_bf16(dy));
  DevBuf y(n * 2), mean(rows * 4), rstd(rows * 4), dx(n * 2);
  DevBuf gw = upload(dw0), gb = upload(db0);
  DevBuf ws(cuda::norm_backward_workspace_bytes(rows, dim));
  void* dx_ptr = alias ? ddy.ptr : dx.ptr;
  const float eps = 1e-5f;
  if (rms) {
    cuda::rmsnorm_forward_bf16(dx_in.ptr, dw_in.ptr, rows, dim, eps, y.ptr, rstd.as<float>(),
                               stream);
    cuda::rmsnorm_backward_bf16(ddy.ptr, dx_in.ptr, dw_in.ptr, rstd.as<float>(), rows, dim,
                                dx_ptr, gw.as<float>(), ws.ptr, stream);
  } else {
    cuda::layernorm_forward_bf16(dx_in.ptr, dw_in.ptr, bias ? db_in.ptr : nullptr, rows, dim, eps,
                                 y.ptr, mean.as<float>(), rstd.as<float>(), stream);
    cuda::layernorm_backward_bf16(ddy.ptr, dx_in.ptr, dw_in.ptr, mean.as<float>(),
                                  rstd.as<float>(), rows, dim, dx_ptr, gw.as<float>(),
                                  bias ? gb.as<float>() : nullptr, ws.ptr, stream);
  }
  CUDA_CHECK(cudaStreamSynchronize(stream));
  NormResult r;
  r.y = download_bf16(y.ptr, n);
  if (!rms) r.mean = download<float>(mean.ptr, rows);
  r.rstd = download<float>(rstd.ptr, rows);
  r.dx = download_bf16(dx_ptr, n);
  r.dw = download<float>(gw.ptr, dim);
  r.db = download<float>(gb.ptr, dim);
  return r;
}

void check_case(bool rms, bool bias, const NormCase& c, uint64_t seed, cudaStream_t stream) {
  const int64_t rows = c.rows, dim = c.dim;
  const std::string name = std::string(rms ? "rmsnorm" : bias ? "layernorm+bias" : "layernorm") +
                           " rows " + std::to_string(rows) + " dim " + std::to_string(dim);
  // A non-zero mean per row makes the LayerNorm centering matter.
  auto x = rand_vec(rows * dim, seed, -2.0f, 2.0f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < dim; ++k) x[r * dim + k] += 0.3f * static_cast<float>(r % 5);
  x = round_bf16(x);
  const auto w = round_bf16(rand_vec(dim, seed + 1, 0.5f, 1.5f));
  const auto b = round_bf16(rand_vec(dim, seed + 2, -0.5f, 0.5f));
  const auto dy = round_bf16(rand_vec(rows * dim, seed + 3));
  const auto dw0 = rand_vec(dim, seed + 4), db0 = rand_vec(dim, seed + 5);

  std::vector<float> y_ref(rows * dim), mean_ref(rows), rstd_ref(rows), dx_ref(rows * dim);
  std::vector<float> dw_ref = dw0, db_ref = db0;
  const float eps = 1e-5f;
  if (rms) {
    cpu::rmsnorm_forward<float>(x.data(), w.data(), rows, dim, eps, y_ref.data(), rstd_ref.data());
    cpu::rmsnorm_backward<float>(dy.data(), x.data(), w.data(), rstd_ref.data(), rows, dim,
                                 dx_ref.data(), dw_ref.data());
  } else {
    cpu::layernorm_forward<float>(x.data(), w.data(), bias ? b.data() : nullptr, rows, dim, eps,
                                  y_ref.data(), mean_ref.data(), rstd_ref.data());
    cpu::layernorm_backward<float>(dy.data(), x.data(), w.data(), mean_ref.data(),
                                   rstd_ref.data(), rows, dim, dx_ref.data(), dw_ref.data(),
                                   bias ? db_ref.data() : nullptr);
  }
  for (bool alias : {false, true}) {
    const NormResult g = run_gpu(rms, bias, rows, dim, x, w, b, dy, dw0, db0, alias, stream);
    const std::string tag = name + (alias ? " (dx aliases dy)" : "");
    // bf16 outputs: one rounding of values of size ~1 gives ~1.5e-3 relative L2.
    EXPECT_LT(rel_l2(g.y, y_ref), 4e-3) << tag;
    EXPECT_LT(rel_l2(g.dx, dx_ref), 4e-3) << tag;
    EXPECT_LT(rel_l2(g.rstd, rstd_ref), 1e-5) << tag;
    if (!rms) EXPECT_LT(rel_l2(g.mean, mean_ref), 1e-5) << tag;
    EXPECT_LT(rel_l2(g.dw, dw_ref), 1e-4) << tag;
    if (bias) {
      EXPECT_LT(rel_l2(g.db, db_ref), 1e-4) << tag;
    } else {
      EXPECT_TRUE(kt::same_bits(g.db, db0)) << tag << ": db written without a bias";
    }
  }
}

TEST_F(NormTest, LayerNormMatchesCpu) {
  cuda::CudaContext ctx;
  uint64_t seed = 100;
  for (const NormCase& c : kCases) check_case(false, false, c, seed += 10, ctx.stream());
}

TEST_F(NormTest, LayerNormWithBiasMatchesCpu) {
  cuda::CudaContext ctx;
  uint64_t seed = 200;
  for (const NormCase& c : kCases) check_case(false, true, c, seed += 10, ctx.stream());
}

TEST_F(NormTest, RmsNormMatchesCpu) {
  cuda::CudaContext ctx;
  uint64_t seed = 300;
  for (const NormCase& c : kCases) check_case(true, false, c, seed += 10, ctx.stream());
}

// Unaligned rows (a buffer offset by one bf16) take the scalar path with a multiple-of-8 dim.
TEST_F(NormTest, RmsNormUnalignedBuffersMatchCpu) {
  cuda::CudaContext ctx;
  const int64_t rows = 33, dim = 64;
  const auto x = round_bf16(rand_vec(rows * dim, 7, -2, 2));
  const auto w = round_bf16(rand_vec(dim, 8, 0.5f, 1.5f));
  std::vector<float> y_ref(rows * dim), rstd_ref(rows);
  cpu::rmsnorm_forward<float>(x.data(), w.data(), rows, dim, 1e-6f, y_ref.data(), rstd_ref.data());
  auto xb = to_bf16(x);
  xb.insert(xb.begin(), 0);
  DevBuf dx = upload(xb), dw = upload(to_bf16(w)), y(rows * dim * 2 + 2), rstd(rows * 4);
  cuda::rmsnorm_forward_bf16(dx.as<uint16_t>() + 1, dw.ptr, rows, dim, 1e-6f,
                             y.as<uint16_t>() + 1, rstd.as<float>(), ctx.stream());
  const auto out = download_bf16(y.as<uint16_t>() + 1, rows * dim);
  EXPECT_LT(rel_l2(out, y_ref), 4e-3);
  EXPECT_LT(rel_l2(download<float>(rstd.ptr, rows), rstd_ref), 1e-5);
}

// The fused residual add + norm gives the bits of add_bf16 then the norm: sum and y, both norms,
// vectorized and scalar dims.
TEST_F(NormTest, AddNormEqualsAddThenNorm) {
  cuda::CudaContext ctx;
  uint64_t seed = 400;
  for (const NormCase& c : kCases) {
    const int64_t n = c.rows * c.dim;
    DevBuf x = kt::dev_rand_bf16(n, seed += 10, -2, 2), res = kt::dev_rand_bf16(n, seed + 1, -2, 2),
           w = kt::dev_rand_bf16(c.dim, seed + 2, 0.5f, 1.5f),
           b = kt::dev_rand_bf16(c.dim, seed + 3);
    for (bool rms : {false, true}) {
      DevBuf sum(n * 2), y(n * 2), mean(c.rows * 4), rstd(c.rows * 4);
      DevBuf sum_ref(n * 2), y_ref(n * 2), mean_ref(c.rows * 4), rstd_ref(c.rows * 4);
      cuda::add_norm_forward_bf16(rms, x.ptr, res.ptr, w.ptr, rms ? nullptr : b.ptr, c.rows, c.dim,
                                  1e-5f, sum.ptr, y.ptr, mean.as<float>(), rstd.as<float>(),
                                  ctx.stream());
      cuda::add_bf16(x.ptr, res.ptr, sum_ref.ptr, n, ctx.stream());
      if (rms)
        cuda::rmsnorm_forward_bf16(sum_ref.ptr, w.ptr, c.rows, c.dim, 1e-5f, y_ref.ptr,
                                   rstd_ref.as<float>(), ctx.stream());
      else
        cuda::layernorm_forward_bf16(sum_ref.ptr, w.ptr, b.ptr, c.rows, c.dim, 1e-5f, y_ref.ptr,
                                     mean_ref.as<float>(), rstd_ref.as<float>(), ctx.stream());
      ctx.synchronize();
      const std::string what = std::string(rms ? "rms" : "layer") + " dim " + std::to_string(c.dim);
      EXPECT_TRUE(kt::same_bits(download<uint16_t>(sum.ptr, n), download<uint16_t>(sum_ref.ptr, n)))
          << what;
      EXPECT_TRUE(kt::same_bits(download<uint16_t>(y.ptr, n), download<uint16_t>(y_ref.ptr, n)))
          << what;
      EXPECT_TRUE(
          kt::same_bits(download<float>(rstd.ptr, c.rows), download<float>(rstd_ref.ptr, c.rows)))
          << what;
      if (!rms)
        EXPECT_TRUE(
            kt::same_bits(download<float>(mean.ptr, c.rows), download<float>(mean_ref.ptr, c.rows)))
            << what;
    }
  }
}

TEST_F(NormTest, ParameterGradientsAreDeterministic) {
  cuda::CudaContext ctx;
  for (const NormCase c : {NormCase{5000, 1024}, NormCase{777, 2048}, NormCase{3001, 64},
                           NormCase{513, 100}}) {
    const auto x = rand_vec(c.rows * c.dim, 11, -2, 2), dy = rand_vec(c.rows * c.dim, 12);
    const auto w = rand_vec(c.dim, 13, 0.5f, 1.5f), b = rand_vec(c.dim, 14);
    const auto dw0 = rand_vec(c.dim, 15), db0 = rand_vec(c.dim, 16);
    for (bool rms : {false, true}) {
      const NormResult a = run_gpu(rms, true, c.rows, c.dim, x, w, b, dy, dw0, db0, false,
                                   ctx.stream());
      const NormResult r = run_gpu(rms, true, c.rows, c.dim, x, w, b, dy, dw0, db0, false,
                                   ctx.stream());
      EXPECT_TRUE(kt::same_bits(a.dw, r.dw)) << "dw, rms " << rms << " dim " << c.dim;
      EXPECT_TRUE(kt::same_bits(a.db, r.db)) << "db, rms " << rms << " dim " << c.dim;
      EXPECT_TRUE(kt::same_bits(a.dx, r.dx)) << "dx, rms " << rms << " dim " << c.dim;
    }
  }
}

TEST_F(NormTest, Bandwidth) {
  cuda::CudaContext ctx;
  const auto s = ctx.stream();
  const int64_t rows = 8192;
  for (int64_t dim : {1024, 2048, 4096}) {
    const int64_t n = rows * dim;
    DevBuf x = kt::dev_rand_bf16(n, 21, -2, 2), dy = kt::dev_rand_bf16(n, 22);
    DevBuf w = kt::dev_rand_bf16(dim, 23, 0.5f, 1.5f), b = kt::dev_rand_bf16(dim, 24);
    DevBuf y(n * 2), dx(n * 2), mean(rows * 4), rstd(rows * 4), dw(dim * 4), db(dim * 4);
    DevBuf ws(cuda::norm_backward_workspace_bytes(rows, dim));
    CUDA_CHECK(cudaMemset(dw.ptr, 0, dim * 4));
    CUDA_CHECK(cudaMemset(db.ptr, 0, dim * 4));
    const std::string shape = " " + std::to_string(rows) + "x" + std::to_string(dim);
    const double fwd_bytes = 4.0 * n, bwd_bytes = 6.0 * n;  // bf16 in/out streams only
    kt::report_bandwidth(("layernorm fwd" + shape).c_str(), fwd_bytes, s, [&] {
      cuda::layernorm_forward_bf16(x.ptr, w.ptr, b.ptr, rows, dim, 1e-5f, y.ptr, mean.as<float>(),
                                   rstd.as<float>(), s);
    });
    kt::report_bandwidth(("layernorm bwd (dx, dw, db)" + shape).c_str(), bwd_bytes, s, [&] {
      cuda::layernorm_backward_bf16(dy.ptr, x.ptr, w.ptr, mean.as<float>(), rstd.as<float>(), rows,
                                    dim, dx.ptr, dw.as<float>(), db.as<float>(), ws.ptr, s);
    });
    kt::report_bandwidth(("rmsnorm fwd" + shape).c_str(), fwd_bytes, s, [&] {
      cuda::rmsnorm_forward_bf16(x.ptr, w.ptr, rows, dim, 1e-5f, y.ptr, rstd.as<float>(), s);
    });
    kt::report_bandwidth(("rmsnorm bwd (dx, dw)" + shape).c_str(), bwd_bytes, s, [&] {
      cuda::rmsnorm_backward_bf16(dy.ptr, x.ptr, w.ptr, rstd.as<float>(), rows, dim, dx.ptr,
                                  dw.as<float>(), ws.ptr, s);
    });
  }
  // Per-head q/k norm: [tokens * heads, head_dim].
  const int64_t qk_rows = 8192 * 16, hd = 128, n = qk_rows * hd;
  DevBuf x = kt::dev_rand_bf16(n, 31, -2, 2), w = kt::dev_rand_bf16(hd, 32);
  DevBuf y(n * 2), rstd(qk_rows * 4);
  kt::report_bandwidth("rmsnorm fwd q/k 131072x128", 4.0 * n, s, [&] {
    cuda::rmsnorm_forward_bf16(x.ptr, w.ptr, qk_rows, hd, 1e-5f, y.ptr, rstd.as<float>(), s);
  });
  // The copy ceiling for reference: a device-to-device copy of the same bytes (read + write).
  const size_t copy_bytes = size_t{8192} * 4096 * 2;
  DevBuf src(copy_bytes), dst(copy_bytes);
  kt::report_bandwidth("cudaMemcpy D2D 64 MiB (read + write)", 2.0 * copy_bytes, s, [&] {
    CUDA_CHECK(cudaMemcpyAsync(dst.ptr, src.ptr, copy_bytes, cudaMemcpyDeviceToDevice, s));
  });
}

}  // namespace
}  // namespace moex
