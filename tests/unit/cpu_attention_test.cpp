// Causal GQA attention: forward against a naive double loop, dq/dk/dv against central differences,
// including a KV-cache case (kv_len > q_len, start_pos > 0).
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <ostream>

#include "cpu/attention.h"
#include "cpu_kernel_checks.h"
#include "gradcheck.h"

namespace moex {
namespace cpu {
// Readable test names in gtest output instead of a byte dump.
void PrintTo(const AttentionShape& s, std::ostream* os) {
  *os << "B" << s.batch << " q" << s.q_len << " kv" << s.kv_len << " H" << s.num_heads << " Hkv"
      << s.num_kv_heads << " Dh" << s.head_dim << " start" << s.start_pos;
}
}  // namespace cpu
namespace {

using testing::numeric_gradient;
using testing::project;
using testing::random_vector;
using testing::relative_l2;

cpu::AttentionShape make_shape(int64_t q_len, int64_t kv_len, int64_t start_pos) {
  cpu::AttentionShape s;
  s.batch = 2;
  s.q_len = q_len;
  s.kv_len = kv_len;
  s.num_heads = 4;
  s.num_kv_heads = 2;
  s.head_dim = 3;
  s.start_pos = start_pos;
  return s;
}

std::vector<double> naive_attention(const std::vector<double>& q, const std::vector<double>& k,
                                    const std::vector<double>& v, const cpu::AttentionShape& s) {
  const int64_t H = s.num_heads, Hkv = s.num_kv_heads, D = s.head_dim;
  const double scale = s.scale > 0 ? s.scale : 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> out(s.batch * s.q_len * H * D, 0.0);
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h * Hkv / H;
      for (int64_t i = 0; i < s.q_len; ++i) {
        const int64_t last = s.start_pos + i;  // keys 0..last are visible
        std::vector<double> score(last + 1);
        double mx = -1e300;
        for (int64_t j = 0; j <= last; ++j) {
          double dot = 0;
          for (int64_t c = 0; c < D; ++c)
            dot +=
                q[((b * s.q_len + i) * H + h) * D + c] * k[((b * s.kv_len + j) * Hkv + g) * D + c];
          score[j] = dot * scale;
          mx = std::max(mx, score[j]);
        }
        double sum = 0;
        for (double& e : score) sum += (e = std::exp(e - mx));
        for (int64_t j = 0; j <= last; ++j)
          for (int64_t c = 0; c < D; ++c)
            out[((b * s.q_len + i) * H + h) * D + c] +=
                score[j] / sum * v[((b * s.kv_len + j) * Hkv + g) * D + c];
      }
    }
  return out;
}

struct Inputs {
  std::vector<double> q, k, v;
};

Inputs make_inputs(const cpu::AttentionShape& s, uint64_t seed) {
  const size_t nq = s.batch * s.q_len * s.num_heads * s.head_dim;
  const size_t nk = s.batch * s.kv_len * s.num_kv_heads * s.head_dim;
  return {random_vector<double>(nq, seed, -2, 2), random_vector<double>(nk, seed + 1, -2, 2),
          random_vector<double>(nk, seed + 2)};
}

class CpuAttention : public ::testing::TestWithParam<cpu::AttentionShape> {};

TEST_P(CpuAttention, ForwardMatchesNaive) {
  const cpu::AttentionShape s = GetParam();
  const Inputs in = make_inputs(s, 10);
  const auto expect = naive_attention(in.q, in.k, in.v, s);
  std::vector<double> out(expect.size(), 99.0),
      probs(s.batch * s.num_heads * s.q_len * s.kv_len, 99.0);
  cpu::attention_forward(in.q.data(), in.k.data(), in.v.data(), s, out.data(), probs.data());
  EXPECT_LT(relative_l2(out, expect), 1e-13);
  for (int64_t r = 0; r < s.batch * s.num_heads * s.q_len; ++r) {
    double sum = 0;
    for (int64_t j = 0; j < s.kv_len; ++j) sum += probs[r * s.kv_len + j];
    EXPECT_NEAR(sum, 1.0, 1e-12);
  }

  const auto qf = testing::cast_vector<float>(in.q), kf = testing::cast_vector<float>(in.k),
             vf = testing::cast_vector<float>(in.v);
  std::vector<float> outf(expect.size()), probsf(probs.size());
  cpu::attention_forward(qf.data(), kf.data(), vf.data(), s, outf.data(), probsf.data());
  EXPECT_LT(relative_l2(testing::cast_vector<double>(outf), expect), 1e-5);
}

TEST_P(CpuAttention, BackwardMatchesFiniteDifferences) {
  const cpu::AttentionShape s = GetParam();
  Inputs in = make_inputs(s, 20);
  const auto proj = random_vector<double>(s.batch * s.q_len * s.num_heads * s.head_dim, 30);
  std::vector<double> out(proj.size()), probs(s.batch * s.num_heads * s.q_len * s.kv_len);
  auto loss = [&] {
    cpu::attention_forward(in.q.data(), in.k.data(), in.v.data(), s, out.data(), probs.data());
    return project(out, proj);
  };
  const auto num_dq = numeric_gradient(in.q, loss);
  const auto num_dk = numeric_gradient(in.k, loss);
  const auto num_dv = numeric_gradient(in.v, loss);
  loss();
  std::vector<double> dq(in.q.size(), 99.0), dk(in.k.size(), 99.0), dv(in.v.size(), 99.0);
  std::vector<double> work(cpu::attention_backward_workspace_elems(s));
  cpu::attention_backward(proj.data(), in.q.data(), in.k.data(), in.v.data(), probs.data(), s,
                          dq.data(), dk.data(), dv.data(), work.data(), work.size());
  EXPECT_LT(relative_l2(dq, num_dq), 1e-6);
  EXPECT_LT(relative_l2(dk, num_dk), 1e-6);
  EXPECT_LT(relative_l2(dv, num_dv), 1e-6);
}

// fp32 backward (which may run one kv-head group per thread) against the fp64 backward.
TEST_P(CpuAttention, Fp32BackwardMatchesFp64) {
  const cpu::AttentionShape s = GetParam();
  const Inputs in = make_inputs(s, 60);
  const auto dout = random_vector<double>(s.batch * s.q_len * s.num_heads * s.head_dim, 61);
  std::vector<double> out(dout.size()), probs(s.batch * s.num_heads * s.q_len * s.kv_len);
  std::vector<double> dq(in.q.size()), dk(in.k.size()), dv(in.v.size());
  std::vector<double> work(cpu::attention_backward_workspace_elems(s));
  cpu::attention_forward(in.q.data(), in.k.data(), in.v.data(), s, out.data(), probs.data());
  cpu::attention_backward(dout.data(), in.q.data(), in.k.data(), in.v.data(), probs.data(), s,
                          dq.data(), dk.data(), dv.data(), work.data(), work.size());
  const auto qf = testing::cast_vector<float>(in.q), kf = testing::cast_vector<float>(in.k),
             vf = testing::cast_vector<float>(in.v), dof = testing::cast_vector<float>(dout);
  std::vector<float> outf(out.size()), probsf(probs.size()), dqf(dq.size(), 9.f),
      dkf(dk.size(), 9.f), dvf(dv.size(), 9.f), workf(work.size());
  cpu::attention_forward(qf.data(), kf.data(), vf.data(), s, outf.data(), probsf.data());
  cpu::attention_backward(dof.data(), qf.data(), kf.data(), vf.data(), probsf.data(), s, dqf.data(),
                          dkf.data(), dvf.data(), workf.data(), workf.size());
  EXPECT_LT(relative_l2(testing::cast_vector<double>(dqf), dq), 1e-5);
  EXPECT_LT(relative_l2(testing::cast_vector<double>(dkf), dk), 1e-5);
  EXPECT_LT(relative_l2(testing::cast_vector<double>(dvf), dv), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CpuAttention,
                         ::testing::Values(make_shape(5, 5, 0),    // training: square causal
                                           make_shape(3, 8, 4),    // decode: keys 0..4+i, 7 unused
                                           make_shape(1, 6, 5)));  // one-token decode step

TEST(CpuAttentionArgs, KvCacheDecodeEqualsTheFullSequence) {
  // Running queries 4..6 against the cache gives the rows 4..6 of the full causal pass.
  const cpu::AttentionShape full = make_shape(7, 7, 0);
  const Inputs in = make_inputs(full, 40);
  std::vector<double> out(full.batch * 7 * 4 * 3), probs(full.batch * 4 * 7 * 7);
  cpu::attention_forward(in.q.data(), in.k.data(), in.v.data(), full, out.data(), probs.data());
  const cpu::AttentionShape dec = make_shape(3, 7, 4);
  std::vector<double> q_tail;
  for (int64_t b = 0; b < 2; ++b)
    q_tail.insert(q_tail.end(), in.q.begin() + (b * 7 + 4) * 12, in.q.begin() + (b * 7 + 7) * 12);
  std::vector<double> out_dec(2 * 3 * 12), probs_dec(2 * 4 * 3 * 7);
  cpu::attention_forward(q_tail.data(), in.k.data(), in.v.data(), dec, out_dec.data(),
                         probs_dec.data());
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t i = 0; i < 3 * 12; ++i)
      EXPECT_NEAR(out_dec[b * 36 + i], out[(b * 7 + 4) * 12 + i], 1e-14);
}

TEST(CpuAttentionArgs, BadArgumentsNameTheArgument) {
  std::vector<float> buf(1024);
  auto forward = [&](const cpu::AttentionShape& s) {
    cpu::attention_forward(buf.data(), buf.data(), buf.data(), s, buf.data(), buf.data());
  };
  cpu::AttentionShape s = make_shape(5, 5, 0);
  s.num_kv_heads = 3;
  testing::expect_error_naming([&] { forward(s); }, {"num_kv_heads", "num_heads"});
  s = make_shape(5, 5, 1);
  testing::expect_error_naming([&] { forward(s); }, {"start_pos", "kv_len"});
  s = make_shape(5, 5, 0);
  s.head_dim = 0;
  testing::expect_error_naming([&] { forward(s); }, {"head_dim"});
  s = make_shape(5, 5, 0);
  testing::expect_error_naming(
      [&] {
        cpu::attention_backward(buf.data(), buf.data(), buf.data(), buf.data(), buf.data(), s,
                                buf.data(), buf.data(), buf.data(), buf.data(), 3);
      },
      {"workspace_elems"});
}

TEST(CpuAttentionArgs, ThreadedSizesMatchNaive) {
  // q_len * kv_len >= the fork threshold, so the softmax rows run on several threads.
  cpu::AttentionShape s = make_shape(130, 140, 10);
  s.batch = 1;
  s.head_dim = 8;
  s.scale = 0.3;  // an explicit scale instead of 1/sqrt(head_dim)
  const Inputs in = make_inputs(s, 50);
  const auto expect = naive_attention(in.q, in.k, in.v, s);
  std::vector<double> out(expect.size()), probs(s.num_heads * s.q_len * s.kv_len);
  cpu::attention_forward(in.q.data(), in.k.data(), in.v.data(), s, out.data(), probs.data());
  EXPECT_LT(relative_l2(out, expect), 1e-13);
}

}  // namespace
}  // namespace moex
