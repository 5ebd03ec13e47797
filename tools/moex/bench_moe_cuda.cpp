#include "bench_moe_cuda.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "core/error.h"

#if defined(MOEX_WITH_CUDA)
#include "cuda/activation.h"
#include "cuda/cuda_check.h"
#include "cuda/device.h"
#include "cuda/gemm.h"
#include "cuda/moe_layer_cuda.h"
#include "cuda/random_fill.h"
#include "dist/device_group.h"
#include "dist/nccl_communicator.h"
#endif

namespace moex::bench {

std::string moe_cuda_bench_json(const MoECudaBenchResult& r) {
  char buf[768];
  std::snprintf(buf, sizeof(buf),
                "{\"shape\": \"%s\", \"mode\": \"%s\", \"fwd_ms\": %.4f, \"fwdbwd_ms\": %.4f, "
                "\"fwd_tflops\": %.2f, \"fwdbwd_tflops\": %.2f",
                r.shape.c_str(), r.mode.c_str(), r.fwd_ms, r.fwdbwd_ms, r.fwd_tflops,
                r.fwdbwd_tflops);
  std::string out = buf;
  if (r.exchange.ep > 1) {
    out += moe_exchange_json(r.exchange, r.fwdbwd_ms);  // no dense comparison then
  } else {
    std::snprintf(buf, sizeof(buf), ", \"dense_fwdbwd_tflops\": %.2f", r.dense_fwdbwd_tflops);
    out += buf;
  }
  if (r.has_host_sync) {
    std::snprintf(buf, sizeof(buf),
                  ", \"host_sync_ms\": %.4f, \"host_wait_ms\": %.4f, \"fwd_known_counts_ms\": %.4f",
                  r.host_sync_ms, r.host_wait_ms, r.fwd_known_counts_ms);
    out += buf;
  }
  return out + "}";
}

std::string moe_cuda_bench_text(const MoECudaBenchResult& r) {
  char buf[512];
  std::snprintf(buf, sizeof(buf),
                "%-12s cuda %-16s fwd %8.3f ms  fwd+bwd %8.3f ms  %6.1f TFLOP/s  (dense FFN %6.1f "
                "TFLOP/s, ratio %.2f)",
                r.shape.c_str(), r.mode.c_str(), r.fwd_ms, r.fwdbwd_ms, r.fwdbwd_tflops,
                r.dense_fwdbwd_tflops,
                r.dense_fwdbwd_tflops > 0 ? r.fwdbwd_tflops / r.dense_fwdbwd_tflops : 0.0);
  std::string out = buf;
  if (r.has_host_sync) {
    std::snprintf(buf, sizeof(buf), "  host sync %.3f ms, host wait %.3f ms", r.host_sync_ms,
                  r.host_wait_ms);
    out += buf;
  }
  return out;
}

#if !defined(MOEX_WITH_CUDA)
MoECudaBenchResult run_moe_bench_cuda(const MoEBenchShape&, const std::string&,
                                      const MoEBenchOptions& options) {
  MOEX_CHECK(options.iters >= 1, "--iters must be >= 1, got ", options.iters);
  MOEX_CHECK(options.warmup >= 0, "--warmup must be >= 0, got ", options.warmup);
  MOEX_THROW("moe-layer --device cuda: built without CUDA");
}
#else

namespace {

// align: the ranks of an expert group start each timed call together (null: one process).
template <class Fn>
double median_ms(cuda::CudaContext& ctx, int warmup, int iters, Fn&& fn,
                 dist::Communicator* align = nullptr) {
  for (int i = 0; i < warmup; ++i) fn();
  ctx.synchronize();
  cuda::EventTimer timer;
  std::vector<double> ms;
  for (int i = 0; i < iters; ++i) {
    if (align != nullptr) {
      ctx.synchronize();
      align->barrier();
    }
    timer.start(ctx.stream());
    fn();
    ms.push_back(timer.stop(ctx.stream()));
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// A dense FFN over `rows` tokens with the experts' activation: the same GEMMs and elementwise
// kernels the layer uses, so the ratio isolates the cost of routing.
struct DenseFfn {
  int64_t rows, d, f, f1;
  bool swiglu;
  Tensor x, w1, w2, h, a, y, dy, da, dh, dx, dw1, dw2;
  DenseFfn(int64_t rows_, int64_t d_, int64_t f_, bool swiglu_, cudaStream_t s)
      : rows(rows_), d(d_), f(f_), f1(swiglu_ ? 2 * f_ : f_), swiglu(swiglu_) {
    auto bf = [](int64_t r, int64_t c) {
      return Tensor::empty({r, c}, DType::kBF16, Device::cuda());
    };
    auto f32 = [](int64_t r, int64_t c) {
      return Tensor::empty({r, c}, DType::kF32, Device::cuda());
    };
    x = bf(rows, d);
    w1 = bf(f1, d);
    w2 = bf(d, f);
    h = bf(rows, f1);
    a = bf(rows, f);
    y = bf(rows, d);
    dy = bf(rows, d);
    da = bf(rows, f);
    dh = bf(rows, f1);
    dx = bf(rows, d);
    dw1 = f32(f1, d);
    dw2 = f32(d, f);
    cuda::fill_uniform_bf16(x.raw_data(), x.numel(), 5, 0, -1, 1, s);
    cuda::fill_uniform_bf16(dy.raw_data(), dy.numel(), 5, 1, -1, 1, s);
    cuda::fill_uniform_bf16(w1.raw_data(), w1.numel(), 5, 2, -0.02f, 0.02f, s);
    cuda::fill_uniform_bf16(w2.raw_data(), w2.numel(), 5, 3, -0.02f, 0.02f, s);
  }
  void forward(cuda::CudaContext& ctx) {
    cuda::gemm_bf16(ctx.cublas(), {false, true, rows, f1, d, d, d, f1}, x.raw_data(), 0,
                    w1.raw_data(), 0, h.raw_data(), 0, false, 1);
    if (swiglu)
      cuda::swiglu_forward_bf16(h.raw_data(), a.raw_data(), rows, f, ctx.stream());
    else
      cuda::gelu_forward_bf16(h.raw_data(), a.raw_data(), rows, f, false, ctx.stream());
    cuda::gemm_bf16(ctx.cublas(), {false, true, rows, d, f, f, f, d}, a.raw_data(), 0,
                    w2.raw_data(), 0, y.raw_data(), 0, false, 1);
  }
  void backward(cuda::CudaContext& ctx) {
    cuda::gemm_bf16(ctx.cublas(), {false, false, rows, f, d, d, f, f}, dy.raw_data(), 0,
                    w2.raw_data(), 0, da.raw_data(), 0, false, 1);
    cuda::gemm_bf16(ctx.cublas(), {true, false, d, f, rows, d, f, f}, dy.raw_data(), 0,
                    a.raw_data(), 0, dw2.raw_data(), 0, true, 1);
    if (swiglu)
      cuda::swiglu_backward_bf16(h.raw_data(), da.raw_data(), dh.raw_data(), nullptr, rows, f,
                                 ctx.stream());
    else
      cuda::gelu_backward_bf16(h.raw_data(), da.raw_data(), dh.raw_data(), nullptr, rows, f, false,
                               ctx.stream());
    cuda::gemm_bf16(ctx.cublas(), {true, false, f1, d, rows, f1, d, d}, dh.raw_data(), 0,
                    x.raw_data(), 0, dw1.raw_data(), 0, true, 1);
    cuda::gemm_bf16(ctx.cublas(), {false, false, rows, d, f1, f1, d, d}, dh.raw_data(), 0,
                    w1.raw_data(), 0, dx.raw_data(), 0, false, 1);
  }
};

}  // namespace

MoECudaBenchResult run_moe_bench_cuda(const MoEBenchShape& shape, const std::string& mode,
                                      const MoEBenchOptions& options) {
  const int warmup = options.warmup, iters = options.iters;
  // dropless = dropless-padded (strided-batched GEMMs over [E, max load, d]); dropless-grouped =
  // exact rows through cublasGemmGroupedBatchedEx (+ one GEMM per expert for fp32 dW).
  MOEX_CHECK(mode == "capacity" || mode == "dropless" || mode == "dropless-padded" ||
                 mode == "dropless-grouped",
             "--mode must be capacity, dropless (= dropless-padded) or dropless-grouped, got '",
             mode, "'");
  MOEX_CHECK(iters >= 1, "--iters must be >= 1, got ", iters);
  MOEX_CHECK(warmup >= 0, "--warmup must be >= 0, got ", warmup);
  // Expert parallelism: one GPU per rank (its local index), the tokens exchanged over NCCL, or
  // through host memory with MOEX_GPU_COLLECTIVES=host (ranks may then share a GPU).
  int rank = 0, ranks = 1;
  const std::unique_ptr<dist::Communicator> group = split_expert_groups(options.ep, &rank, &ranks);
  const int ordinal =
      group ? dist::Communicator::world().local_rank() % std::max(1, cuda::device_count()) : 0;
  cuda::init();
  CUDA_CHECK(cudaSetDevice(ordinal));
  cuda::CudaContext ctx(ordinal);
  std::unique_ptr<dist::DeviceGroup> gpu_group;
  if (group) {
    dist::NcclOptions nccl;
    nccl.device = ordinal;
    gpu_group = dist::make_device_group(*group, nccl);
  }
  const bool dropless = mode != "capacity";
  MoEConfig config = moe_bench_config(shape, dropless);
  config.aux_loss_coef = 0.01f;
  cuda::MoELayerCudaOptions opt;
  opt.max_tokens = shape.tokens;
  opt.dropless_gemm =
      mode == "dropless-grouped" ? cuda::DroplessGemm::kGrouped : cuda::DroplessGemm::kPadded;
  opt.expert_group = gpu_group.get();
  // MOEX_PAD_MULTIPLE overrides padded_row_multiple (0: one strided-batched call over max load).
  if (const char* pm = std::getenv("MOEX_PAD_MULTIPLE")) opt.padded_row_multiple = std::atoll(pm);
  MoECudaBenchResult r;
  r.shape = shape.name;
  r.mode = mode;
  const int64_t T = shape.tokens, d = shape.hidden;
  double expert_fwd_flops = 0;
  {
    cuda::MoELayerCuda layer(config, opt, ctx);
    layer.init_random(17);
    Tensor x = Tensor::empty({T, d}, DType::kBF16, Device::cuda());
    Tensor y = Tensor::empty({T, d}, DType::kBF16, Device::cuda());
    Tensor dy = Tensor::empty({T, d}, DType::kBF16, Device::cuda());
    Tensor dx = Tensor::empty({T, d}, DType::kBF16, Device::cuda());
    // Each rank its own tokens (and so its own routing).
    cuda::fill_uniform_bf16(x.raw_data(), x.numel(), 9 + 2 * rank, 0, -1, 1, ctx.stream());
    cuda::fill_uniform_bf16(dy.raw_data(), dy.numel(), 10 + 2 * rank, 1, -1, 1, ctx.stream());
    const double wait0 = layer.host_wait_ms();
    const int64_t syncs0 = layer.host_syncs();
    r.fwd_ms = median_ms(
        ctx, warmup, iters, [&] { layer.forward(x, y, true, 1, 0); }, group.get());
    if (dropless && !group) {
      // The dropless host sync's cost: the same forward with the counts known in advance.
      r.has_host_sync = true;
      const int64_t syncs = layer.host_syncs() - syncs0;
      r.host_wait_ms = syncs > 0 ? (layer.host_wait_ms() - wait0) / syncs : 0.0;
      layer.reuse_dropless_counts(true);
      r.fwd_known_counts_ms =
          median_ms(ctx, warmup, iters, [&] { layer.forward(x, y, true, 1, 0); });
      layer.reuse_dropless_counts(false);
      r.host_sync_ms = r.fwd_ms - r.fwd_known_counts_ms;
    }
    // --recompute: as an activation-checkpointed layer runs, a first pass that keeps nothing (but
    // its exchange under --cac), the recompute with the same routing, then backward.
    const bool recompute = options.recompute || options.cac;
    auto fwdbwd = [&] {
      if (recompute) {
        cuda::MoEStepCuda first{true, 1, 0};
        first.keep_for_backward = false;
        first.keep_exchange = options.cac;
        layer.forward(x, y, first);
        cuda::MoEStepCuda again{true, 1, 0};
        again.keep_in_scratch = true;
        again.reuse_exchange = options.cac;
        layer.forward(x, y, again);
      } else {
        layer.forward(x, y, true, 1, 0);
      }
      layer.backward(dy, dx);
    };
    for (int i = 0; i < warmup; ++i) fwdbwd();
    const cuda::ExchangeStatsCuda before = layer.exchange_stats();
    r.fwdbwd_ms = median_ms(ctx, 0, iters, fwdbwd, group.get());
    const cuda::ExchangeStatsCuda after = layer.exchange_stats();
    if (group)
      r.exchange = exchange_report(options, rank, ranks, after.ms - before.ms,
                                   after.bytes_sent - before.bytes_sent,
                                   after.bytes_saved - before.bytes_saved);
    const cuda::MoEStatsCuda st = layer.stats();
    const int64_t routed = T * shape.top_k - st.num_dropped;  // rows the experts computed usefully
    expert_fwd_flops = moe_expert_flops(shape, routed);
    std::fprintf(stderr, "[moex cuda] %s %s: C=%lld rows=%lld dropped=%lld routed=%lld\n",
                 shape.name.c_str(), mode.c_str(), static_cast<long long>(st.capacity),
                 static_cast<long long>(st.num_rows), static_cast<long long>(st.num_dropped),
                 static_cast<long long>(routed));
    if (opt.dropless_gemm == cuda::DroplessGemm::kGrouped && dropless) {
      const cuda::GroupedGemmStats gs = cuda::grouped_gemm_stats();
      std::fprintf(
          stderr, "[moex cuda] grouped GEMM calls: %lld grouped, %lld looped (%lld refused)\n",
          static_cast<long long>(gs.grouped_calls), static_cast<long long>(gs.looped_calls),
          static_cast<long long>(gs.not_supported));
    }
  }
  r.fwd_tflops = expert_fwd_flops / (r.fwd_ms * 1e-3) / 1e12;
  const int passes = options.recompute || options.cac ? 4 : 3;  // + the recompute's forward
  r.fwdbwd_tflops = passes * expert_fwd_flops / (r.fwdbwd_ms * 1e-3) / 1e12;
  if (!group) {
    // Dense FFN over T*k rows: the same FLOPs as the routed tokens at capacity factor 1.
    const int64_t rows = T * shape.top_k;
    DenseFfn dense(rows, d, shape.ffn, shape.activation == ExpertActivation::kSwiGLU, ctx.stream());
    r.dense_fwdbwd_ms = median_ms(ctx, warmup, iters, [&] {
      dense.forward(ctx);
      dense.backward(ctx);
    });
    r.dense_fwdbwd_tflops = 3 * moe_expert_flops(shape, rows) / (r.dense_fwdbwd_ms * 1e-3) / 1e12;
  }
  cuda::release_cached_blocks();
  return r;
}
#endif

}  // namespace moex::bench
