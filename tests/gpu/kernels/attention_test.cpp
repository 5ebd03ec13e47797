// Flash-style bf16 attention (cuda/attention.h) against its CPU twin (cpu/attention.h) in fp32 on
// the same bf16-rounded inputs: out, dq, dk, dv by relative L2 error, lse against log(sum exp)
// computed here in double. Inputs are random (never zeros) and wide enough that the softmax is
// far from flat; outputs are poisoned with 0xFF bytes (NaN) before each run, so an element the
// kernels never write fails the comparison.
#include "cpu/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "cuda/attention.h"
#include "cuda/cuda_check.h"
#include "cuda/device.h"
#include "kernel_test_util.h"

namespace moex {
namespace {

using kt::DevBuf;
using kt::rel_l2;

// Inputs as the GPU stores them (bf16-rounded), on the test's own random stream.
std::vector<float> rand_bf16_vec(size_t n, uint64_t seed, float lo, float hi) {
  return kt::round_bf16(kt::rand_vec(n, seed, lo, hi, /*stream=*/0xa77));
}
void upload(DevBuf& b, const std::vector<float>& v) {
  kt::upload_to(b.ptr, kt::to_bf16(v));
}
std::vector<float> download_bf16(const DevBuf& b, size_t n) {
  return kt::download_bf16(b.ptr, n);
}
std::vector<float> download_f32(const DevBuf& b, size_t n) {
  return kt::download<float>(b.ptr, n);
}

struct Case {
  int64_t batch, q_len, kv_len, start_pos, heads, kv_heads, head_dim;
  float scale = 0.0f;
  cuda::AttentionEngine engine = cuda::AttentionEngine::kOwn;      // forward
  cuda::AttentionEngine bwd_engine = cuda::AttentionEngine::kOwn;  // backward
  std::string name() const {
    return "B" + std::to_string(batch) + " Tq" + std::to_string(q_len) + " Tk" +
           std::to_string(kv_len) + " start" + std::to_string(start_pos) + " H" +
           std::to_string(heads) + "/" + std::to_string(kv_heads) + " D" + std::to_string(head_dim);
  }
};

constexpr double kTol = 2e-2;

// Runs forward (and backward when training-shaped) on the GPU and the CPU twin and compares.
void check_case(const Case& cs, uint64_t seed) {
  SCOPED_TRACE(cs.name());
  const int64_t B = cs.batch, Tq = cs.q_len, Tk = cs.kv_len, H = cs.heads, Hkv = cs.kv_heads,
                D = cs.head_dim;
  const size_t nq = B * Tq * H * D, nkv = B * Tk * Hkv * D, nl = B * H * Tq;
  // q, k in +-2.5: scores of std ~2 after the 1/sqrt(D) scale, a peaked softmax.
  const auto q = rand_bf16_vec(nq, seed, -2.5f, 2.5f);
  const auto k = rand_bf16_vec(nkv, seed + 1, -2.5f, 2.5f);
  const auto v = rand_bf16_vec(nkv, seed + 2, -1.0f, 1.0f);
  const auto dout = rand_bf16_vec(nq, seed + 3, -1.0f, 1.0f);

  cpu::AttentionShape shape{B, Tq, Tk, H, Hkv, D, cs.start_pos, cs.scale};
  std::vector<float> out_ref(nq), probs(B * H * Tq * Tk);
  cpu::attention_forward<float>(q.data(), k.data(), v.data(), shape, out_ref.data(), probs.data());

  // lse in double straight from the definition.
  const double scale = cs.scale > 0 ? cs.scale : 1.0 / std::sqrt(double(D));
  std::vector<float> lse_ref(nl);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < Tq; ++i) {
        const int64_t g = h / (H / Hkv), keys = std::min(Tk, cs.start_pos + i + 1);
        std::vector<double> s(keys);
        double mx = -INFINITY;
        for (int64_t j = 0; j < keys; ++j) {
          double dot = 0;
          for (int64_t c = 0; c < D; ++c)
            dot += double(q[((b * Tq + i) * H + h) * D + c]) * k[((b * Tk + j) * Hkv + g) * D + c];
          s[j] = scale * dot;
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (double x : s) sum += std::exp(x - mx);
        lse_ref[(b * H + h) * Tq + i] = static_cast<float>(mx + std::log(sum));
      }

  DevBuf dq_in(nq * 2), dk_in(nkv * 2), dv_in(nkv * 2), dout_d(nq * 2);
  upload(dq_in, q);
  upload(dk_in, k);
  upload(dv_in, v);
  upload(dout_d, dout);
  DevBuf out_d(nq * 2), lse_d(nl * 4);
  cuda::AttentionParams p{B, Tq, Tk, H, Hkv, D, cs.start_pos, cs.scale, cs.engine};
  cuda::attention_forward_bf16(dq_in.ptr, dk_in.ptr, dv_in.ptr, out_d.ptr,
                               static_cast<float*>(lse_d.ptr), p, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  const auto out = download_bf16(out_d, nq);
  const auto lse = download_f32(lse_d, nl);
  EXPECT_LT(rel_l2(out, out_ref), kTol) << "out";
  double lse_err = 0;
  for (size_t i = 0; i < nl; ++i) {
    const double e =
        std::fabs(double(lse[i]) - lse_ref[i]) / std::max(1.0, std::fabs(double(lse_ref[i])));
    lse_err = std::isfinite(lse[i]) ? std::max(lse_err, e) : INFINITY;
  }
  EXPECT_LT(lse_err, 1e-3) << "lse";

  // Backward is for the training shape only; with one key dq and dk are exactly zero (nothing to
  // compare relatively).
  if (cs.start_pos != 0 || Tq != Tk || Tq == 1) return;
  std::vector<float> dq_ref(nq), dk_ref(nkv), dv_ref(nkv);
  std::vector<float> ws(cpu::attention_backward_workspace_elems(shape));
  cpu::attention_backward<float>(dout.data(), q.data(), k.data(), v.data(), probs.data(), shape,
                                 dq_ref.data(), dk_ref.data(), dv_ref.data(), ws.data(), ws.size());
  DevBuf dq_d(nq * 2), dk_d(nkv * 2), dv_d(nkv * 2);
  p.engine = cs.bwd_engine;  // the forward's out and lse, whichever engine made them
  DevBuf work(cuda::attention_backward_workspace_bytes(p));
  cuda::attention_backward_bf16(dout_d.ptr, dq_in.ptr, dk_in.ptr, dv_in.ptr, out_d.ptr,
                                static_cast<const float*>(lse_d.ptr), dq_d.ptr, dk_d.ptr, dv_d.ptr,
                                work.ptr, p, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_LT(rel_l2(download_bf16(dq_d, nq), dq_ref), kTol) << "dq";
  EXPECT_LT(rel_l2(download_bf16(dk_d, nkv), dk_ref), kTol) << "dk";
  EXPECT_LT(rel_l2(download_bf16(dv_d, nkv), dv_ref), kTol) << "dv";
}

class GpuAttention : public kt::GpuKernel {};

TEST_F(GpuAttention, TrainingFastHeadDims) {
  check_case({2, 37, 37, 0, 4, 4, 64}, 11);     // one partial tile, MHA
  check_case({2, 257, 257, 0, 8, 4, 64}, 12);   // H/Hkv 2, T past a tile edge
  check_case({1, 100, 100, 0, 8, 2, 128}, 13);  // H/Hkv 4
  check_case({2, 257, 257, 0, 4, 1, 128}, 14);  // MQA
  check_case({1, 1000, 1000, 0, 2, 1, 128}, 15);
}

TEST_F(GpuAttention, TrainingOtherHeadDims) {
  check_case({2, 37, 37, 0, 4, 2, 16}, 21);
  check_case({1, 257, 257, 0, 4, 1, 16}, 22);
  check_case({2, 100, 100, 0, 4, 2, 80}, 23);
  check_case({1, 130, 130, 0, 4, 4, 96}, 24);
  check_case({1, 70, 70, 0, 4, 2, 8}, 25);
  check_case({1, 70, 70, 0, 2, 1, 10}, 26);  // not a multiple of 8: element-wise loads
  check_case({1, 90, 90, 0, 4, 2, 256}, 27);
}

TEST_F(GpuAttention, TrainingExplicitScale) {
  Case cs{2, 100, 100, 0, 4, 2, 64};
  cs.scale = 0.3f;
  check_case(cs, 31);
}

// cuDNN's fused attention (cuda/cudnn_attention.h) on the training shapes: the same comparisons
// against the CPU twin, the lse in the same definition (the engines' forwards and backwards are
// interchangeable), and kAuto picks it for the training models' shapes.
TEST_F(GpuAttention, CudnnTrainingShapes) {
  const cuda::AttentionEngine cudnn = cuda::AttentionEngine::kCudnn,
                              own = cuda::AttentionEngine::kOwn;
  check_case({2, 37, 37, 0, 4, 4, 64, 0.0f, cudnn, cudnn}, 61);
  check_case({2, 257, 257, 0, 8, 4, 64, 0.0f, cudnn, cudnn}, 62);
  check_case({1, 100, 100, 0, 8, 2, 128, 0.0f, cudnn, cudnn}, 63);
  check_case({2, 257, 257, 0, 4, 1, 128, 0.0f, cudnn, cudnn}, 64);
  check_case({2, 100, 100, 0, 4, 2, 64, 0.3f, cudnn, cudnn}, 65);
  check_case({1, 1024, 1024, 0, 16, 4, 64, 0.0f, cudnn, cudnn}, 66);  // configs/gpu-small.json's
  check_case({1, 512, 512, 0, 16, 8, 128, 0.0f, cudnn, cudnn}, 67);   // configs/gpu-medium.json's
  // Either engine's backward takes the other's forward (the same lse).
  check_case({2, 257, 257, 0, 8, 4, 64, 0.0f, own, cudnn}, 68);
  check_case({1, 300, 300, 0, 8, 2, 128, 0.0f, cudnn, own}, 69);
  for (const cuda::AttentionParams& p : {cuda::AttentionParams{8, 1024, 1024, 16, 4, 64, 0, 0.0f},
                                         cuda::AttentionParams{4, 2048, 2048, 16, 8, 128, 0, 0.0f}})
    EXPECT_TRUE(cuda::attention_uses_cudnn(p)) << "T=" << p.q_len << " D=" << p.head_dim;
  cuda::AttentionParams decode{2, 1, 50, 8, 2, 64, 40, 0.0f};
  EXPECT_FALSE(cuda::attention_uses_cudnn(decode)) << "decoding runs the own kernels";
}

TEST_F(GpuAttention, DecodingForward) {
  check_case({2, 1, 50, 40, 8, 2, 64}, 41);     // one query, cache longer than needed
  check_case({2, 5, 300, 200, 4, 4, 128}, 42);  // five queries, masked cache tail
  check_case({1, 5, 133, 123, 4, 1, 16}, 43);
  check_case({3, 1, 1, 0, 4, 2, 128}, 44);      // first token
  check_case({1, 70, 400, 257, 8, 2, 64}, 45);  // a prefill chunk after a cached prefix
}

// The own kernels' dk and dv are summed over the kv group inside one CTA in a fixed order: the
// same bits every run.
TEST_F(GpuAttention, BackwardDkDvAreDeterministic) {
  const int64_t B = 2, T = 300, H = 8, Hkv = 2, D = 128;
  const size_t nq = B * T * H * D, nkv = B * T * Hkv * D;
  DevBuf q(nq * 2), k(nkv * 2), v(nkv * 2), dout(nq * 2), out(nq * 2), lse(B * H * T * 4);
  upload(q, rand_bf16_vec(nq, 51, -2.5f, 2.5f));
  upload(k, rand_bf16_vec(nkv, 52, -2.5f, 2.5f));
  upload(v, rand_bf16_vec(nkv, 53, -1.0f, 1.0f));
  upload(dout, rand_bf16_vec(nq, 54, -1.0f, 1.0f));
  cuda::AttentionParams p{B, T, T, H, Hkv, D, 0, 0.0f, cuda::AttentionEngine::kOwn};
  cuda::attention_forward_bf16(q.ptr, k.ptr, v.ptr, out.ptr, static_cast<float*>(lse.ptr), p,
                               nullptr);
  DevBuf work(cuda::attention_backward_workspace_bytes(p));
  std::vector<uint16_t> first[2];
  for (int run = 0; run < 2; ++run) {
    DevBuf dq(nq * 2), dk(nkv * 2), dv(nkv * 2);
    cuda::attention_backward_bf16(dout.ptr, q.ptr, k.ptr, v.ptr, out.ptr,
                                  static_cast<const float*>(lse.ptr), dq.ptr, dk.ptr, dv.ptr,
                                  work.ptr, p, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<uint16_t> dkv(2 * nkv);
    CUDA_CHECK(cudaMemcpy(dkv.data(), dk.ptr, nkv * 2, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(dkv.data() + nkv, dv.ptr, nkv * 2, cudaMemcpyDeviceToHost));
    first[run] = std::move(dkv);
  }
  EXPECT_TRUE(first[0] == first[1]);
}

TEST_F(GpuAttention, RejectsBadShapes) {
  cuda::AttentionParams p{1, 4, 4, 4, 3, 16, 0, 0.0f};  // 3 does not divide 4
  EXPECT_THROW(
      cuda::attention_forward_bf16(nullptr, nullptr, nullptr, nullptr, nullptr, p, nullptr), Error);
  p = {1, 4, 8, 4, 2, 16, 2, 0.0f};  // backward only for the training shape
  EXPECT_THROW(cuda::attention_backward_bf16(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                             nullptr, nullptr, nullptr, nullptr, p, nullptr),
               Error);
  p = {1, 4, 4, 4, 2, 258, 0, 0.0f};  // head_dim past 256
  EXPECT_THROW(
      cuda::attention_forward_bf16(nullptr, nullptr, nullptr, nullptr, nullptr, p, nullptr), Error);
}

}  // namespace
}  // namespace moex
