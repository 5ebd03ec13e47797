#include "bench_moe.h"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <memory>

#include "core/error.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "core/timer.h"
#include "dist/communicator.h"
#include "moe/experts.h"
#include "moe/moe_layer.h"

namespace moex::bench {
namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Median wall time of fn over iters runs after warmup runs.
double time_ms(const std::function<void()>& fn, int warmup, int iters) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> ms;
  for (int i = 0; i < iters; ++i) {
    const double start = now_ms();
    fn();
    ms.push_back(now_ms() - start);
  }
  return median(ms);
}

void fill(float* p, int64_t n, uint64_t seed, float scale) {
  for (int64_t i = 0; i < n; ++i) p[i] = scale * (2.0f * philox_uniform(seed, 0xbe7c, i) - 1.0f);
}

}  // namespace

const std::vector<MoEBenchShape>& moe_bench_shapes() {
  static const std::vector<MoEBenchShape> shapes = {
      // Sized to run in seconds on 2 CPU cores.
      // DeepSpeed-MoE GPT style: top-1, GELU, capacity factor 1.0.
      {"ds-top1-gelu", "cpu", 2048, 512, 2048, 8, 1, ExpertActivation::kGelu, 1.0f},
      // Mixtral style: top-2, SwiGLU.
      {"top2-swiglu", "cpu", 2048, 512, 1024, 8, 2, ExpertActivation::kSwiGLU, 1.25f},
      // GPU shapes (bf16, one H100/H200): Mixtral 8x7B, fine-grained (DeepSeek/Qwen-MoE), GShard.
      {"mixtral", "cuda", 8192, 4096, 14336, 8, 2, ExpertActivation::kSwiGLU, 1.0f},
      {"finegrained", "cuda", 8192, 2048, 1408, 64, 6, ExpertActivation::kSwiGLU, 1.0f},
      {"gshard", "cuda", 8192, 2048, 8192, 16, 2, ExpertActivation::kGelu, 1.0f},
  };
  return shapes;
}

const MoEBenchShape& moe_bench_shape(const std::string& name) {
  std::string names;
  for (const auto& s : moe_bench_shapes()) {
    if (s.name == name) return s;
    names += (names.empty() ? "" : ", ") + s.name;
  }
  MOEX_THROW("--shape: unknown shape '", name, "' (known: ", names, ")");
}

MoEConfig moe_bench_config(const MoEBenchShape& shape, bool dropless) {
  MoEConfig c;
  c.hidden_size = shape.hidden;
  c.ffn_size = shape.ffn;
  c.num_experts = shape.num_experts;
  c.top_k = shape.top_k;
  c.activation = shape.activation;
  c.capacity_factor_train = shape.capacity_factor;
  c.capacity_factor_eval = shape.capacity_factor;
  c.renormalize = shape.top_k > 1;
  c.dropless = dropless;
  c.aux_loss_coef = 0.01f;
  return c;
}

double moe_expert_flops(const MoEBenchShape& shape, int64_t routed) {
  const int matrices = shape.activation == ExpertActivation::kSwiGLU ? 3 : 2;
  return 2.0 * static_cast<double>(shape.hidden) * shape.ffn * matrices * routed;
}

std::string moe_exchange_json(const MoEExchangeReport& x, double fwdbwd_ms) {
  char buf[320];
  std::snprintf(buf, sizeof(buf),
                ", \"ep\": %d, \"ranks\": %d, \"a2a_ms\": %.3f, \"a2a_bytes\": %lld, "
                "\"a2a_share\": %.3f, \"recompute\": %s, \"cac\": %s, \"a2a_saved_bytes\": %lld",
                x.ep, x.ranks, x.a2a_ms, static_cast<long long>(x.a2a_bytes),
                fwdbwd_ms > 0 ? x.a2a_ms / fwdbwd_ms : 0.0, x.recompute ? "true" : "false",
                x.cac ? "true" : "false", static_cast<long long>(x.a2a_saved_bytes));
  return buf;
}

std::string moe_bench_json(const MoEBenchResult& r) {
  char line[512];
  std::snprintf(line, sizeof(line),
                "{\"shape\": \"%s\", \"device\": \"%s\", \"mode\": \"%s\", \"fwd_ms\": %.3f, "
                "\"fwdbwd_ms\": %.3f, \"fwd_gflops\": %.2f, \"fwdbwd_gflops\": %.2f, "
                "\"routed_tokens\": %lld",
                r.shape.c_str(), r.device.c_str(), r.mode.c_str(), r.fwd_ms, r.fwdbwd_ms,
                r.fwd_gflops, r.fwdbwd_gflops, static_cast<long long>(r.routed));
  if (r.exchange.ep > 1) return line + moe_exchange_json(r.exchange, r.fwdbwd_ms) + "}";
  char tail[128];
  std::snprintf(tail, sizeof(tail), ", \"dense_fwdbwd_gflops\": %.2f, \"moe_over_dense\": %.3f}",
                r.dense_fwdbwd_gflops,
                r.dense_fwdbwd_gflops > 0 ? r.fwdbwd_gflops / r.dense_fwdbwd_gflops : 0.0);
  return std::string(line) + tail;
}

std::string moe_bench_text(const MoEBenchResult& r) {
  char line[512];
  std::snprintf(
      line, sizeof(line),
      "%-14s %-4s %-9s fwd %8.2f ms  fwd+bwd %8.2f ms  %7.1f GFLOP/s  (dense FFN %7.1f GFLOP/s, "
      "ratio %.2f)",
      r.shape.c_str(), r.device.c_str(), r.mode.c_str(), r.fwd_ms, r.fwdbwd_ms, r.fwdbwd_gflops,
      r.dense_fwdbwd_gflops,
      r.dense_fwdbwd_gflops > 0 ? r.fwdbwd_gflops / r.dense_fwdbwd_gflops : 0.0);
  return line;
}

std::unique_ptr<dist::Communicator> split_expert_groups(int ep, int* rank, int* ranks) {
  *rank = 0;
  *ranks = 1;
  if (ep <= 1) return nullptr;
  dist::Communicator& world = dist::Communicator::world();
  *rank = world.rank();
  *ranks = world.size();
  MOEX_CHECK(*ranks % ep == 0, "--ep ", ep, " must divide the number of ranks (", *ranks,
             "): launch with mpirun -np N, N a multiple of --ep");
  return world.split(*rank / ep, *rank % ep);
}

MoEExchangeReport exchange_report(const MoEBenchOptions& options, int rank, int ranks,
                                  double a2a_ms, int64_t bytes_sent, int64_t bytes_saved) {
  MoEExchangeReport x;
  x.ep = options.ep;
  x.rank = rank;
  x.ranks = ranks;
  x.a2a_ms = a2a_ms / options.iters;
  x.a2a_bytes = bytes_sent / options.iters;
  x.recompute = options.recompute || options.cac;
  x.cac = options.cac;
  x.a2a_saved_bytes = bytes_saved / options.iters;
  return x;
}

MoEBenchResult run_moe_bench_cpu(const MoEBenchShape& shape, const MoEBenchOptions& options) {
  MOEX_CHECK(options.iters >= 1, "--iters must be >= 1, got ", options.iters);
  MOEX_CHECK(options.warmup >= 0, "--warmup must be >= 0, got ", options.warmup);
  const MoEConfig config = moe_bench_config(shape, options.dropless);
  // Expert parallelism: every rank routes its own tokens.
  int rank = 0, ranks = 1;
  std::unique_ptr<dist::Communicator> group = split_expert_groups(options.ep, &rank, &ranks);
  MoELayer layer(config, DType::kF32, group.get());
  layer.init_weights(1);
  const int64_t num_t = shape.tokens, d = shape.hidden;
  Tensor x = Tensor::empty(Shape{num_t, d}, DType::kF32);
  Tensor dy = Tensor::empty(Shape{num_t, d}, DType::kF32);
  fill(x.data<float>(), x.numel(), 1 + 2 * static_cast<uint64_t>(rank), 1.0f);
  fill(dy.data<float>(), dy.numel(), 2 + 2 * static_cast<uint64_t>(rank), 1e-3f);
  MoEForwardOptions fwd;
  fwd.training = true;
  fwd.seed = 7;

  // One dense FFN over the same number of rows: the same FLOPs with no routing at all.
  layer.forward(x, fwd);
  const int64_t rows = layer.routing().plan.num_kept();
  const moe::FfnShape fs{d, shape.ffn, shape.activation, false};
  const int64_t f1 = fs.first_rows();
  std::vector<float> xd(rows * d), w1(f1 * d), w2(d * shape.ffn), h(rows * f1), a(rows * shape.ffn);
  std::vector<float> out(rows * d), dout(rows * d), dx(rows * d), dw1(w1.size()), dw2(w2.size());
  std::vector<float> ws(moe::ffn_workspace_elems(fs, rows));
  fill(xd.data(), xd.size(), 3, 1.0f);
  fill(w1.data(), w1.size(), 4, 0.04f);
  fill(w2.data(), w2.size(), 5, 0.03f);
  fill(dout.data(), dout.size(), 6, 1e-3f);

  // The MoE and dense runs alternate so that load from other processes on a shared machine
  // falls on both alike; each reports its median.
  auto moe_fwd = [&] { layer.forward(x, fwd); };
  const bool recompute = options.recompute || options.cac;
  MoERouting held;
  auto moe_fwdbwd = [&] {
    if (recompute) {  // the first pass of a checkpointed layer, then its recompute
      MoEForwardOptions first = fwd;
      first.keep_for_backward = false;
      first.keep_exchange = options.cac;
      layer.forward(x, first);
      held = layer.routing();
      MoEForwardOptions again = fwd;
      again.fixed_routing = &held;
      again.reuse_exchange = options.cac;
      layer.forward(x, again);
    } else {
      layer.forward(x, fwd);
    }
    layer.backward(dy);
  };
  auto dense_fwdbwd = [&] {
    moe::ffn_forward<float>(fs, xd.data(), rows, w1.data(), w2.data(), h.data(), a.data(),
                            out.data());
    moe::ffn_backward<float>(fs, xd.data(), rows, w1.data(), w2.data(), h.data(), dout.data(),
                             ws.data(), dx.data(), 0.0f, dw1.data(), dw2.data(), 0.0f);
  };
  const bool ep = group != nullptr;
  for (int i = 0; i < options.warmup; ++i) {
    moe_fwdbwd();
    if (!ep) dense_fwdbwd();
  }
  std::vector<double> t_fwd, t_fwdbwd, t_dense;
  moe::ExchangeStats a2a;  // over the timed forward+backward calls
  for (int i = 0; i < options.iters; ++i) {
    if (ep) group->barrier();  // the ranks start each timed call together
    t_fwd.push_back(time_ms(moe_fwd, 0, 1));
    if (ep) group->barrier();
    const moe::ExchangeStats before = layer.exchange_stats();
    t_fwdbwd.push_back(time_ms(moe_fwdbwd, 0, 1));
    a2a += layer.exchange_stats() - before;
    if (!ep) t_dense.push_back(time_ms(dense_fwdbwd, 0, 1));
  }
  MoEBenchResult r;
  r.shape = shape.name;
  r.device = "cpu";
  r.mode = options.dropless ? "dropless" : "capacity";
  r.routed = rows;
  r.fwd_ms = median(t_fwd);
  r.fwdbwd_ms = median(t_fwdbwd);
  const double flops = moe_expert_flops(shape, rows);
  r.fwd_gflops = flops / (r.fwd_ms * 1e6);
  r.fwdbwd_gflops = (recompute ? 4 : 3) * flops / (r.fwdbwd_ms * 1e6);  // + the recompute
  if (!ep) r.dense_fwdbwd_gflops = 3 * flops / (median(t_dense) * 1e6);
  r.exchange =
      exchange_report(options, rank, ranks, a2a.seconds * 1e3, a2a.bytes_sent, a2a.bytes_saved);
  return r;
}

}  // namespace moex::bench
