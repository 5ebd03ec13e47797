// Times the causal GQA attention kernels (cuda/attention.h) on two training shapes and prints one
// JSON line per shape: median of 20 timed runs (CUDA events) after warm-up, forward alone and
// forward + backward. FLOPs count the causal half: fwd = 2 * 2 * B * H * T * T * Dh / 2, bwd =
// 2.5 x fwd. Peer: bench/peers/attention_peer.py (PyTorch scaled_dot_product_attention).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <vector>

#include "cuda/attention.h"
#include "cuda/cuda_check.h"
#include "cuda/device.h"
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

void run(const BenchShape& s, cudaStream_t stream) {
  const int64_t nq = s.batch * s.seq * s.heads * s.head_dim;
  const int64_t nkv = s.batch * s.seq * s.kv_heads * s.head_dim;
  cuda::AttentionParams p{s.batch, s.seq, s.seq, s.heads, s.kv_heads, s.head_dim, 0, 0.0f};
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
      "{\"shape\": \"%s\", \"impl\": \"moex\", \"B\": %lld, \"T\": %lld, \"H\": %lld, "
      "\"Hkv\": %lld, \"Dh\": %lld, \"fwd_ms\": %.4f, \"fwdbwd_ms\": %.4f, \"fwd_tflops\": %.1f, "
      "\"fwdbwd_tflops\": %.1f}\n",
      s.name, (long long)s.batch, (long long)s.seq, (long long)s.heads, (long long)s.kv_heads,
      (long long)s.head_dim, fwd_ms, fwdbwd_ms, fwd_flops / (fwd_ms * 1e9),
      fwdbwd_flops / (fwdbwd_ms * 1e9));
  std::fflush(stdout);
  for (void* ptr : {q, k, v, out, dout, dq, dk, dv, work}) CUDA_CHECK(cudaFree(ptr));
  CUDA_CHECK(cudaFree(lse));
}

}  // namespace

int main() {
  moex::cuda::init();
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  const BenchShape shapes[] = {{"small", 8, 1024, 16, 4, 64}, {"medium", 4, 2048, 16, 8, 128}};
  for (const BenchShape& s : shapes) run(s, stream);
  CUDA_CHECK(cudaStreamDestroy(stream));
  return 0;
}
