// Embedding gather / scatter-add against cpu/embedding.h: the gather is exact, the accumulating
// gather (learned positions) rounds once, and the sorted backward repeats the twin's additions in
// token order, so dtable must equal the CPU result bit for bit (with many repeated ids).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cpu/embedding.h"
#include "cuda/embedding.h"
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

class EmbeddingTest : public kt::GpuKernel {};

struct EmbCase {
  int64_t n, vocab, dim;
};
const EmbCase kCases[] = {{1, 50, 8},     {37, 7, 24},    {1000, 50, 13},  {1000, 3, 1024},
                          {300, 1000, 64}, {8192, 32000, 16}, {5, 100000, 8},  {9, 40, 1000}};

std::vector<int32_t> make_ids(int64_t n, int64_t vocab, uint64_t seed) {
  const auto u = rand_vec(n, seed, 0.0f, 1.0f);
  std::vector<int32_t> ids(n);
  for (int64_t i = 0; i < n; ++i)
    ids[i] = std::min<int32_t>(static_cast<int32_t>(u[i] * vocab), static_cast<int32_t>(vocab - 1));
  return ids;
}

TEST_F(EmbeddingTest, ForwardMatchesCpu) {
  cuda::CudaContext ctx;
  uint64_t seed = 900;
  for (const EmbCase& c : kCases) {
    const std::string tag = "n " + std::to_string(c.n) + " vocab " + std::to_string(c.vocab) +
                            " dim " + std::to_string(c.dim);
    const auto ids = make_ids(c.n, c.vocab, seed += 5);
    const auto table = round_bf16(rand_vec(c.vocab * c.dim, seed + 1));
    const auto out0 = round_bf16(rand_vec(c.n * c.dim, seed + 2));
    std::vector<float> ref(c.n * c.dim);
    cpu::embedding_forward<float>(ids.data(), table.data(), c.n, c.vocab, c.dim, ref.data());
    DevBuf dids = upload(ids), dtable = upload(to_bf16(table)), out(c.n * c.dim * 2);
    cuda::embedding_forward_bf16(dids.as<int32_t>(), dtable.ptr, c.n, c.vocab, c.dim, out.ptr,
                                 false, ctx.stream());
    EXPECT_TRUE(kt::same_bits(download_bf16(out.ptr, c.n * c.dim), ref)) << "gather " << tag;
    // Accumulate (token + learned position embedding): one bf16 rounding of the fp32 sum.
    std::vector<float> acc_ref(c.n * c.dim);
    for (size_t i = 0; i < acc_ref.size(); ++i) acc_ref[i] = out0[i] + ref[i];
    DevBuf acc = upload(to_bf16(out0));
    cuda::embedding_forward_bf16(dids.as<int32_t>(), dtable.ptr, c.n, c.vocab, c.dim, acc.ptr,
                                 true, ctx.stream());
    EXPECT_LT(rel_l2(download_bf16(acc.ptr, c.n * c.dim), acc_ref), 4e-3) << "accumulate " << tag;
  }
}

// A tensor-parallel vocabulary slice: the table holds rows [first, first + rows) of the whole
// vocabulary; ids outside read zeros (over a poisoned output), as in cpu::embedding_slice_forward.
TEST_F(EmbeddingTest, VocabularySliceMatchesCpu) {
  cuda::CudaContext ctx;
  uint64_t seed = 930;
  for (const EmbCase& c : kCases) {
    for (const int64_t parts : {2, 3}) {
      const int64_t rows = (c.vocab + parts - 1) / parts, first = (parts - 1) * rows / 2;
      const std::string tag = "n " + std::to_string(c.n) + " rows " + std::to_string(first) + "+" +
                              std::to_string(rows) + " dim " + std::to_string(c.dim);
      const auto ids = make_ids(c.n, c.vocab, seed += 5);
      const auto table = round_bf16(rand_vec(rows * c.dim, seed + 1));
      std::vector<float> ref(c.n * c.dim);
      cpu::embedding_slice_forward<float>(ids.data(), table.data(), c.n, first, rows, c.dim,
                                          ref.data());
      DevBuf dids = upload(ids), dtable = upload(to_bf16(table));
      DevBuf out = upload(to_bf16(std::vector<float>(c.n * c.dim, 7.0f)));
      cuda::embedding_forward_bf16(dids.as<int32_t>(), dtable.ptr, c.n, rows, c.dim, out.ptr, false,
                                   ctx.stream(), first);
      EXPECT_TRUE(kt::same_bits(download_bf16(out.ptr, c.n * c.dim), ref)) << tag;
    }
  }
}

TEST_F(EmbeddingTest, BackwardIsBitIdenticalToCpu) {
  cuda::CudaContext ctx;
  uint64_t seed = 950;
  for (const EmbCase& c : kCases) {
    const std::string tag = "n " + std::to_string(c.n) + " vocab " + std::to_string(c.vocab) +
                            " dim " + std::to_string(c.dim);
    const auto ids = make_ids(c.n, c.vocab, seed += 5);
    const auto dout = round_bf16(rand_vec(c.n * c.dim, seed + 1));
    const auto dtable0 = rand_vec(c.vocab * c.dim, seed + 2);  // += onto random values
    std::vector<float> ref = dtable0;
    cpu::embedding_backward<float>(ids.data(), dout.data(), c.n, c.vocab, c.dim, ref.data());
    DevBuf dids = upload(ids), ddout = upload(to_bf16(dout));
    // Stream-ordered scratch form.
    DevBuf dt = upload(dtable0);
    cuda::embedding_backward_bf16(dids.as<int32_t>(), ddout.ptr, c.n, c.vocab, c.dim,
                                  dt.as<float>(), ctx.stream());
    const auto got = download<float>(dt.ptr, c.vocab * c.dim);
    EXPECT_TRUE(kt::same_bits(got, ref))
        << tag << ", rel L2 " << rel_l2(got, ref);
    // Caller's workspace form (poisoned scratch).
    DevBuf dt2 = upload(dtable0);
    DevBuf ws(cuda::embedding_backward_workspace_bytes(c.n, c.vocab));
    cuda::embedding_backward_bf16(dids.as<int32_t>(), ddout.ptr, c.n, c.vocab, c.dim,
                                  dt2.as<float>(), ws.ptr, ctx.stream());
    EXPECT_TRUE(kt::same_bits(download<float>(dt2.ptr, c.vocab * c.dim), ref))
        << tag << " (workspace form)";
  }
}

TEST_F(EmbeddingTest, Bandwidth) {
  cuda::CudaContext ctx;
  const auto s = ctx.stream();
  const int64_t n = 8192, vocab = 32000, dim = 2048;
  DevBuf ids = upload(make_ids(n, vocab, 77)), table = kt::dev_rand_bf16(vocab * dim, 78);
  DevBuf out(n * dim * 2), dtable(vocab * dim * 4);
  DevBuf ws(cuda::embedding_backward_workspace_bytes(n, vocab));
  CUDA_CHECK(cudaMemset(dtable.ptr, 0, vocab * dim * 4));
  kt::report_bandwidth("embedding fwd 8192x2048", 4.0 * n * dim, s, [&] {
    cuda::embedding_forward_bf16(ids.as<int32_t>(), table.ptr, n, vocab, dim, out.ptr, false, s);
  });
  // bf16 dout read + fp32 rows read and written.
  kt::report_bandwidth("embedding bwd 8192x2048 (sorted)", 10.0 * n * dim, s, [&] {
    cuda::embedding_backward_bf16(ids.as<int32_t>(), out.ptr, n, vocab, dim, dtable.as<float>(),
                                  ws.ptr, s);
  });
}

}  // namespace
}  // namespace moex
