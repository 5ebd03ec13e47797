// Times the causal GQA attention kernels (cuda/attention.h) on two training shapes and prints one
// JSON line per shape: median of 20 timed runs (CUDA events) after warm-up, forward alone and
// forward + backward. FLOPs count the causal half: fwd = 2 * 2 * B * H * T * T * Dh / 2, bwd =
// 2.5 x fwd. Peer: bench/peers/attention_peer.py (PyTorch scaled_dot_product_attention).
//
// Then serving prefill over the paged KV pool (cuda/paged_attention.h): the rows of one sequence
// at positions [first, first + rows), Mixtral's heads (32 of 128, 8 KV heads), 16-position blocks
// in shuffled order, attended three ways: every row alone (the decode kernel), in tiles of 64 rows
// on tensor cores (the flash kernel reading the block table), and the contiguous flash forward
// over the same keys unpaged. One JSON line each with "prefill": true; FLOPs = 2 * 2 * H * Dh *
// (keys summed over the rows).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <utility>
#include <vector>

#include "cuda/attention.h"
#include "cuda/cuda_check.h"
#include "cuda/cudnn_attention.h"
#include "cuda/device.h"
#include "cuda/paged_attention.h"
#include "cuda/random_fill.h"

namespace {

using namespace moex;

struct BenchShape {
  const char* name;
  int64_t batch, seq, heads, kv_heads, head_dim;
};

float median_ms(const std::function<void()>& fn, cudaStream_t stream, int iters = 20) {
  for (int i = 0; i < 5; ++i) fn();  // warm-up
  CUDA_CHECK(cudaStreamSynchronize(stream));
  cuda::EventTimer timer;
  std::vector<float> ms;
  for (int i = 0; i < iters; ++i) {
    timer.start(stream);
    fn();
    ms.push_back(timer.stop(stream));
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// impl "moex": the own kernels; "moex-cudnn": cuDNN's fused attention (cuda/cudnn_attention.h),
// skipped with a line on stderr where cuDNN does not run the shape.
void run(const BenchShape& s, cuda::AttentionEngine engine, cudaStream_t stream) {
  const int64_t nq = s.batch * s.seq * s.heads * s.head_dim;
  const int64_t nkv = s.batch * s.seq * s.kv_heads * s.head_dim;
  cuda::AttentionParams p{s.batch, s.seq, s.seq, s.heads, s.kv_heads, s.head_dim, 0, 0.0f, engine};
  const bool cudnn = engine == cuda::AttentionEngine::kCudnn;
  if (cudnn && !cuda::cudnn_attention_supports(p)) {
    std::fprintf(stderr, "%s: cuDNN does not run this shape\n", s.name);
    return;
  }
  void *q, *k, *v, *out, *dout, *dq, *dk, *dv, *work;
  float* lse;
  CUDA_CHECK(cudaMalloc(&q, nq * 2));     // [B, T, H, Dh]
  CUDA_CHECK(cudaMalloc(&k, nkv * 2));    // [B, T, Hkv, Dh]
  CUDA_CHECK(cudaMalloc(&v, nkv * 2));    // [B, T, Hkv, Dh]
  CUDA_CHECK(cudaMalloc(&out, nq * 2));   // [B, T, H, Dh]
  CUDA_CHECK(cudaMalloc(&dout, nq * 2));  // [B, T, H, Dh]
  CUDA_CHECK(cudaMalloc(&dq, nq * 2));
  CUDA_CHECK(cudaMalloc(&dk, nkv * 2));
  CUDA_CHECK(cudaMalloc(&dv, nkv * 2));
  CUDA_CHECK(cudaMalloc(&lse, s.batch * s.heads * s.seq * 4));  // [B, H, T]
  CUDA_CHECK(cudaMalloc(&work, cuda::attention_backward_workspace_bytes(p)));
  cuda::fill_uniform_bf16(q, nq, 1, 0, -1.0f, 1.0f, stream);
  cuda::fill_uniform_bf16(k, nkv, 2, 0, -1.0f, 1.0f, stream);
  cuda::fill_uniform_bf16(v, nkv, 3, 0, -1.0f, 1.0f, stream);
  cuda::fill_uniform_bf16(dout, nq, 4, 0, -1.0f, 1.0f, stream);

  auto fwd = [&] { cuda::attention_forward_bf16(q, k, v, out, lse, p, stream); };
  auto fwdbwd = [&] {
    fwd();
    cuda::attention_backward_bf16(dout, q, k, v, out, lse, dq, dk, dv, work, p, stream);
  };
  const float fwd_ms = median_ms(fwd, stream);
  const float fwdbwd_ms = median_ms(fwdbwd, stream);
  const double fwd_flops =
      2.0 * 2.0 * s.batch * s.heads * double(s.seq) * double(s.seq) * s.head_dim / 2.0;
  const double fwdbwd_flops = 3.5 * fwd_flops;
  std::printf(
      "{\"shape\": \"%s\", \"impl\": \"%s\", \"B\": %lld, \"T\": %lld, \"H\": %lld, "
      "\"Hkv\": %lld, \"Dh\": %lld, \"fwd_ms\": %.4f, \"fwdbwd_ms\": %.4f, \"fwd_tflops\": %.1f, "
      "\"fwdbwd_tflops\": %.1f}\n",
      s.name, cudnn ? "moex-cudnn" : "moex", (long long)s.batch, (long long)s.seq, (long long)s.heads, (long long)s.kv_heads,
      (long long)s.head_dim, fwd_ms, fwdbwd_ms, fwd_flops / (fwd_ms * 1e9),
      fwdbwd_flops / (fwdbwd_ms * 1e9));
  std::fflush(stdout);
  for (void* ptr : {q, k, v, out, dout, dq, dk, dv, work}) CUDA_CHECK(cudaFree(ptr));
  CUDA_CHECK(cudaFree(lse));
}

// Rows of sequences over a paged pool with Mixtral's attention heads (32 of 128, 8 KV heads),
// 16-position blocks handed out in a shuffled order: sequence s owns `per_seq` blocks, row r is
// position row_pos[r] of sequence row_seq[r]. Random q, k and v on the device (seeds seed..seed +
// 2), `params` for a launch over every row; the buffers are freed with the pool.
struct PagedPool {
  static constexpr int64_t kHeads = 32, kKvHeads = 8, kDh = 128, kBs = 16;
  std::vector<void*> device;  // q, out, k, v, table, row_seq, row_pos
  cuda::PagedAttentionParams params;

  PagedPool(int64_t seqs, int64_t per_seq, const std::vector<int32_t>& row_seq,
            const std::vector<int32_t>& row_pos, uint64_t seed, cudaStream_t stream) {
    const int64_t num_blocks = seqs * per_seq, rows = static_cast<int64_t>(row_seq.size());
    std::vector<int32_t> table(num_blocks);
    for (int64_t b = 0; b < num_blocks; ++b)
      table[b] = static_cast<int32_t>((b * 7919) % num_blocks);  // a permutation (7919 is prime)
    const int64_t nq = rows * kHeads * kDh, nkv = num_blocks * kBs * kKvHeads * kDh;
    // [R, H, Dh] twice, then [blocks, bs, Hkv, Dh] twice (unpaged: [positions, Hkv, Dh]).
    for (const int64_t elems : {nq, nq, nkv, nkv}) {
      device.push_back(nullptr);
      CUDA_CHECK(cudaMalloc(&device.back(), elems * 2));
    }
    for (const std::vector<int32_t>* host : {&std::as_const(table), &row_seq, &row_pos}) {
      device.push_back(nullptr);
      CUDA_CHECK(cudaMalloc(&device.back(), std::max<size_t>(host->size(), 1) * 4));
      CUDA_CHECK(cudaMemcpy(device.back(), host->data(), host->size() * 4, cudaMemcpyHostToDevice));
    }
    cuda::fill_uniform_bf16(q(), nq, seed, 0, -1.0f, 1.0f, stream);
    cuda::fill_uniform_bf16(k(), nkv, seed + 1, 0, -1.0f, 1.0f, stream);
    cuda::fill_uniform_bf16(v(), nkv, seed + 2, 0, -1.0f, 1.0f, stream);
    params.q = q();
    params.out = out();
    params.k_pool = k();
    params.v_pool = v();
    params.tables = static_cast<const int32_t*>(device[4]);
    params.row_seq = static_cast<const int32_t*>(device[5]);
    params.row_pos = static_cast<const int32_t*>(device[6]);
    params.rows = rows;
    params.heads = kHeads;
    params.kv_heads = kKvHeads;
    params.head_dim = kDh;
    params.block_size = kBs;
    params.max_blocks = per_seq;
  }
  ~PagedPool() {
    for (void* ptr : device) CUDA_CHECK(cudaFree(ptr));
  }
  PagedPool(const PagedPool&) = delete;
  PagedPool& operator=(const PagedPool&) = delete;
  void* q() const { return device[0]; }
  void* out() const { return device[1]; }
  void* k() const { return device[2]; }
  void* v() const { return device[3]; }
};

struct PrefillShape {
  const char* name;
  int64_t first, rows;
};

void run_prefill(const PrefillShape& s, cudaStream_t stream) {
  using P = PagedPool;
  const int64_t len = s.first + s.rows;
  std::vector<int32_t> row_seq(s.rows, 0), row_pos(s.rows), tiles, rest;
  for (int64_t r = 0; r < s.rows; ++r) row_pos[r] = static_cast<int32_t>(s.first + r);
  for (int64_t r = 0; r < s.rows; r += 64)  // the most keys first, as ops::plan_paged_tiles
    tiles.insert(tiles.begin(),
                 {static_cast<int32_t>(r), static_cast<int32_t>(std::min<int64_t>(64, s.rows - r)),
                  0, static_cast<int32_t>(s.first + r)});
  const PagedPool pool(1, (len + P::kBs - 1) / P::kBs, row_seq, row_pos, 5, stream);
  void *d_tiles, *lse;
  CUDA_CHECK(cudaMalloc(&d_tiles, tiles.size() * 4));
  CUDA_CHECK(cudaMemcpy(d_tiles, tiles.data(), tiles.size() * 4, cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMalloc(&lse, s.rows * P::kHeads * 4));  // [H, R] of the unpaged forward
  const cuda::PagedAttentionParams& p = pool.params;
  cuda::PagedAttentionParams tiled = p;
  tiled.tiles = static_cast<const int32_t*>(d_tiles);
  tiled.num_tiles = static_cast<int64_t>(tiles.size()) / 4;
  tiled.tile_rows = 64;
  tiled.rest_rows = static_cast<const int32_t*>(d_tiles);  // none: num_rest 0
  tiled.num_rest = 0;
  // The own flash kernel, as the earlier rows measured it (a prompt from position 0 would take
  // cuDNN under kAuto).
  const cuda::AttentionParams contiguous{1,      s.rows,  len,  P::kHeads,
                                         P::kKvHeads, P::kDh, s.first, 0.0f,
                                         cuda::AttentionEngine::kOwn};
  double keys = 0;
  for (int64_t r = 0; r < s.rows; ++r) keys += static_cast<double>(s.first + r + 1);
  const double flops = 2.0 * 2.0 * P::kHeads * P::kDh * keys;
  const std::pair<const char*, std::function<void()>> impls[] = {
      {"moex_paged_rows", [&] { cuda::paged_attention_bf16(p, stream); }},
      {"moex_paged_tiles", [&] { cuda::paged_attention_bf16(tiled, stream); }},
      {"moex_contiguous",
       [&] {
         cuda::attention_forward_bf16(pool.q(), pool.k(), pool.v(), pool.out(),
                                      static_cast<float*>(lse), contiguous, stream);
       }},
  };
  for (const auto& [impl, fn] : impls) {
    const float ms = median_ms(fn, stream);
    std::printf(
        "{\"prefill\": true, \"shape\": \"%s\", \"impl\": \"%s\", \"first\": %lld, "
        "\"rows\": %lld, \"H\": %lld, \"Hkv\": %lld, \"Dh\": %lld, \"fwd_ms\": %.4f, "
        "\"fwd_tflops\": %.1f}\n",
        s.name, impl, (long long)s.first, (long long)s.rows, (long long)P::kHeads,
        (long long)P::kKvHeads, (long long)P::kDh, ms, flops / (ms * 1e9));
    std::fflush(stdout);
  }
  for (void* ptr : {d_tiles, lse}) CUDA_CHECK(cudaFree(ptr));
}

// Decode rows over the paged pool: `rows` sequences of `len` positions each (their last position
// attends all), one launch per (heads per block, position splits) pair; 0 lets the launcher
// choose. One JSON line each with "decode": true and the KV bytes read per microsecond.
void run_decode_attention(int64_t rows, int64_t len, cudaStream_t stream) {
  using P = PagedPool;
  std::vector<int32_t> row_seq(rows), row_pos(rows, static_cast<int32_t>(len - 1));
  for (int64_t r = 0; r < rows; ++r) row_seq[r] = static_cast<int32_t>(r);
  const PagedPool pool(rows, (len + P::kBs - 1) / P::kBs, row_seq, row_pos, 8, stream);
  cuda::PagedAttentionParams p = pool.params;
  const double kv_bytes = 2.0 * rows * len * P::kKvHeads * P::kDh * 2;
  const std::pair<int, int> variants[] = {{0, 0}, {1, 1}, {1, 4},  {1, 9},  {1, 16},
                                          {4, 1}, {4, 8}, {4, 16}, {4, 32}, {2, 16}};
  for (const auto& [g, splits] : variants) {
    p.heads_per_block = g;
    p.position_splits = splits;
    const float ms = median_ms([&] { cuda::paged_attention_bf16(p, stream); }, stream);
    std::printf(
        "{\"decode\": true, \"rows\": %lld, \"len\": %lld, \"heads_per_block\": %d, "
        "\"splits\": %d, \"us\": %.2f, \"kv_gbps\": %.0f}\n",
        (long long)rows, (long long)len, g, splits, ms * 1e3, kv_bytes / (ms * 1e6));
    std::fflush(stdout);
  }
}

}  // namespace

int main() {
  moex::cuda::init();
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  const BenchShape shapes[] = {{"small", 8, 1024, 16, 4, 64}, {"medium", 4, 2048, 16, 8, 128}};
  for (const BenchShape& s : shapes)
    for (cuda::AttentionEngine e : {cuda::AttentionEngine::kOwn, cuda::AttentionEngine::kCudnn})
      run(s, e, stream);
  // Whole prompts in one step, the last 512-row chunk of a chunked 8K prompt, and short chunks
  // far into a sequence (where a tile has few rows to share its keys).
  const PrefillShape prefill[] = {{"prompt2k", 0, 2048},       {"prompt8k", 0, 8192},
                                  {"chunk512at8k", 7680, 512}, {"chunk64at4k", 4032, 64},
                                  {"chunk16at4k", 4080, 16},   {"chunk8at4k", 4088, 8}};
  for (const PrefillShape& s : prefill) run_prefill(s, stream);
  for (const int64_t rows : {1, 8})
    for (const int64_t len : {1024, 4096, 16384}) run_decode_attention(rows, len, stream);
  CUDA_CHECK(cudaStreamDestroy(stream));
  return 0;
}
