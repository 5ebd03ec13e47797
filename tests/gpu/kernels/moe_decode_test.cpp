// The MoE decode kernels (cuda/moe_decode.h) against naive loops on the host: random routes in
// moe_gating's padded layout, random weights and inputs, poisoned outputs; SwiGLU and GELU, shapes
// whose sizes are not multiples of the tiles, row counts that take several passes.
#include "cuda/moe_decode.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kernel_test_util.h"

namespace moex {
namespace {

using kt::DevBuf;

// Routes of T tokens to top_k distinct experts each, in the padded layout (C = the largest count).
struct Routes {
  int64_t capacity = 0;
  std::vector<int32_t> gather;  // [E * C] route (token * k + j) or -1
  std::vector<int32_t> counts;  // [E]
};

Routes random_routes(int64_t T, int E, int k, uint64_t seed) {
  std::vector<std::vector<int32_t>> per_expert(E);
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int> experts(E);
    for (int e = 0; e < E; ++e) experts[e] = e;
    for (int j = 0; j < k; ++j) {  // partial Fisher-Yates: k distinct experts
      const int pick = j + static_cast<int>(philox_uniform(seed, t, j) * (E - j)) % (E - j);
      std::swap(experts[j], experts[pick]);
      per_expert[experts[j]].push_back(static_cast<int32_t>(t * k + j));
    }
  }
  Routes r;
  for (const auto& v : per_expert) r.capacity = std::max<int64_t>(r.capacity, v.size());
  r.gather.assign(E * r.capacity, -1);
  for (int e = 0; e < E; ++e) {
    r.counts.push_back(static_cast<int32_t>(per_expert[e].size()));
    for (size_t s = 0; s < per_expert[e].size(); ++s)
      r.gather[e * r.capacity + s] = per_expert[e][s];
  }
  return r;
}

float round_bf16(float v) {
  return bf16_to_f32(f32_to_bf16(v));
}

struct Shape {
  int64_t d, f;
  int E, k;
  bool swiglu;
};

// out rows of every route, from bf16 values: h rounded to bf16 before the activation, a in bf16.
std::vector<float> reference(const Shape& s, const Routes& r, int64_t T,
                             const std::vector<float>& x, const std::vector<float>& w1,
                             const std::vector<float>& w2) {
  const int64_t d = s.d, F = s.f, F1 = s.swiglu ? 2 * F : F, C = r.capacity;
  std::vector<float> out(s.E * C * d, 0.0f);
  for (int e = 0; e < s.E; ++e)
    for (int64_t slot = 0; slot < C; ++slot) {
      const int32_t route = r.gather[e * C + slot];
      if (route < 0) continue;
      const float* xr = &x[(route / s.k) * d];
      std::vector<float> a(F);
      auto dot = [&](const float* w, const float* v, int64_t n) {
        double acc = 0;
        for (int64_t i = 0; i < n; ++i) acc += double(w[i]) * v[i];
        return static_cast<float>(acc);
      };
      for (int64_t j = 0; j < F; ++j) {
        const float h0 = round_bf16(dot(&w1[(e * F1 + j) * d], xr, d));
        if (s.swiglu) {
          const float h1 = round_bf16(dot(&w1[(e * F1 + F + j) * d], xr, d));
          a[j] = round_bf16(h0 / (1.0f + std::exp(-h0)) * h1);
        } else {
          a[j] = round_bf16(0.5f * h0 *
                            (1.0f + std::tanh(0.7978845608f * (h0 + 0.044715f * h0 * h0 * h0))));
        }
      }
      for (int64_t j = 0; j < d; ++j)
        out[(e * C + slot) * d + j] = dot(&w2[(e * d + j) * F], a.data(), F);
    }
  (void)T;
  return out;
}

// The kernel's arguments over device buffers.
cuda::MoEDecodeParams decode_params(const DevBuf& x, const DevBuf& gather, const DevBuf& counts,
                                    const DevBuf& info, const DevBuf& w1, const DevBuf& w2,
                                    const DevBuf& a, const DevBuf& out, int64_t T, int64_t d,
                                    int64_t F, int E, int k) {
  cuda::MoEDecodeParams p;
  p.x = x.ptr;
  p.gather = gather.as<int32_t>();
  p.counts = counts.as<int32_t>();
  p.info = info.as<int32_t>();
  p.w1 = w1.ptr;
  p.w2 = w2.ptr;
  p.a = a.ptr;
  p.out = out.ptr;
  p.num_tokens = T;
  p.d = d;
  p.f = F;
  p.num_experts = E;
  p.top_k = k;
  return p;
}

class MoEDecodeTest : public kt::GpuKernel {};

TEST_F(MoEDecodeTest, MatchesNaiveLoops) {
  cuda::CudaContext ctx;
  // The last shape: a reduction longer than one pass of the warps' chunks (K > 1024), SwiGLU with
  // F not a multiple of 16, and more than 32 experts (the slot search's second ballot).
  const Shape shapes[] = {
      {64, 48, 8, 2, true}, {40, 56, 6, 2, false}, {96, 80, 4, 1, true}, {1096, 1160, 40, 2, true}};
  for (const Shape& s : shapes)
    for (const int64_t T : {int64_t{1}, int64_t{3}, int64_t{13}, int64_t{29}, int64_t{64}}) {
      const int64_t d = s.d, F = s.f, F1 = s.swiglu ? 2 * F : F;
      const Routes r = random_routes(T, s.E, s.k, 100 + T);
      const auto x = kt::round_bf16(kt::rand_vec(T * d, 1 + T));
      const float scale = 1.0f / std::sqrt(static_cast<float>(d));
      const auto w1 = kt::round_bf16(kt::rand_vec(s.E * F1 * d, 2, -scale, scale));
      const auto w2 = kt::round_bf16(kt::rand_vec(s.E * d * F, 3, -scale, scale));
      const std::vector<float> want = reference(s, r, T, x, w1, w2);
      DevBuf dx = kt::upload(kt::to_bf16(x)), dw1 = kt::upload(kt::to_bf16(w1)),
             dw2 = kt::upload(kt::to_bf16(w2)), dg = kt::upload(r.gather),
             dc = kt::upload(r.counts),
             di = kt::upload(std::vector<int32_t>{static_cast<int32_t>(r.capacity), 0, 0, 0});
      {
        DevBuf da(s.E * T * F * 2), dout(s.E * T * d * 2);
        cuda::MoEDecodeParams p =
            decode_params(dx, dg, dc, di, dw1, dw2, da, dout, T, d, F, s.E, s.k);
        p.swiglu = s.swiglu;
        cuda::moe_decode_experts(p, ctx.stream());
        const auto got_all = kt::download_bf16(dout.ptr, s.E * r.capacity * d);
        // Only the routed rows are outputs; padding rows stay poisoned (NaN).
        std::vector<float> got, ref;
        for (int64_t row = 0; row < s.E * r.capacity; ++row) {
          if (r.gather[row] < 0) {
            EXPECT_TRUE(std::isnan(got_all[row * d])) << "padding row " << row << " was written";
            continue;
          }
          got.insert(got.end(), got_all.begin() + row * d, got_all.begin() + (row + 1) * d);
          ref.insert(ref.end(), want.begin() + row * d, want.begin() + (row + 1) * d);
        }
        ASSERT_EQ(got.size(), static_cast<size_t>(T * s.k * d));
        // fp32 accumulation in another order than the double reference, and a in bf16.
        EXPECT_LT(kt::rel_l2(got, ref), 8e-3)
            << "d=" << d << " F=" << F << " E=" << s.E << " k=" << s.k << " T=" << T
            << (s.swiglu ? " swiglu" : " gelu");
      }
    }
}

// Weight bytes each call must read (the selected experts) over the time: printed, never asserted.
TEST_F(MoEDecodeTest, ReportsBandwidth) {
  cuda::CudaContext ctx;
  const int64_t d = 4096, F = 14336;
  const int E = 8, k = 2;
  DevBuf w1 = kt::dev_rand_bf16(E * 2 * F * d, 5, -0.02f, 0.02f),
         w2 = kt::dev_rand_bf16(E * d * F, 6, -0.02f, 0.02f);
  for (const int64_t T : {int64_t{1}, int64_t{8}, int64_t{16}, int64_t{32}, int64_t{64}}) {
    const Routes r = random_routes(T, E, k, 7 + T);
    int selected = 0;
    for (int32_t c : r.counts) selected += c > 0;
    DevBuf x = kt::dev_rand_bf16(T * d, 8), a(E * T * F * 2), out(E * T * d * 2),
           dg = kt::upload(r.gather), dc = kt::upload(r.counts),
           di = kt::upload(std::vector<int32_t>{static_cast<int32_t>(r.capacity), 0, 0, 0});
    {
      const cuda::MoEDecodeParams p = decode_params(x, dg, dc, di, w1, w2, a, out, T, d, F, E, k);
      const std::string what =
          "moe_decode mixtral T=" + std::to_string(T) + " experts=" + std::to_string(selected);
      kt::report_bandwidth(what.c_str(), selected * 3.0 * F * d * 2, ctx.stream(),
                           [&] { cuda::moe_decode_experts(p, ctx.stream()); });
    }
  }
}

}  // namespace
}  // namespace moex
