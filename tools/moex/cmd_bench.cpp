// moex bench moe-layer|train-step|decode: benchmarks that print JSON lines (docs/architecture.md
// §Testing: benchmarks are not tests; peers are compared side by side in one run on the same
// machine).
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "args.h"
#include "bench_model.h"
#include "bench_moe.h"
#include "bench_moe_cuda.h"
#include "command.h"
#include "core/error.h"

namespace moex::cli {
namespace {

void print_help() {
  std::printf(
      "usage: moex bench moe-layer [--device cpu|cuda] [--shape NAME] [--mode capacity|dropless]\n"
      "                            [--iters N] [--warmup N] [--json]\n"
      "       moex bench train-step [--config F] [--iters N]   CPU forward+backward+AdamW, "
      "tokens/s\n"
      "       moex bench decode [--config F] [--tokens N]      CPU greedy decode with KV cache, "
      "tokens/s\n\n"
      "  moe-layer   MoE layer forward and forward+backward against a dense FFN with the same "
      "FLOPs\n"
      "  --device    cpu (default) or cuda\n"
      "  --shape     one shape (default: every shape sized for the device):\n");
  for (const auto& s : bench::moe_bench_shapes()) {
    std::printf("                %-12s %-4s T=%lld d=%lld F=%lld E=%d k=%d %s cf=%.2f\n",
                s.name.c_str(), s.device.c_str(), static_cast<long long>(s.tokens),
                static_cast<long long>(s.hidden), static_cast<long long>(s.ffn), s.num_experts,
                s.top_k, s.activation == ExpertActivation::kSwiGLU ? "swiglu" : "gelu",
                s.capacity_factor);
  }
  std::printf(
      "  --mode      capacity (default) or dropless\n"
      "  --iters     timed runs per measurement, median reported (default 5)\n"
      "  --warmup    untimed runs first (default 1)\n"
      "  --json      one JSON object per line per shape\n");
}

int run_moe_layer(const Args& args) {
  const std::string device = args.get("device", "cpu");
  MOEX_CHECK(device == "cpu" || device == "cuda", "--device must be cpu or cuda, got '", device,
             "'");
  const std::string mode = args.get("mode", "capacity");
  MOEX_CHECK(mode == "capacity" || mode == "dropless" ||
                 (device == "cuda" && (mode == "dropless-padded" || mode == "dropless-grouped")),
             "--mode must be capacity or dropless, got '", mode, "'");
  bench::MoEBenchOptions options;
  options.dropless = mode == "dropless";
  options.iters = static_cast<int>(args.get_int("iters", 5));
  options.warmup = static_cast<int>(args.get_int("warmup", 1));

  std::vector<bench::MoEBenchShape> shapes;
  if (args.has("shape")) {
    shapes.push_back(bench::moe_bench_shape(args.get("shape")));
  } else {
    for (const auto& s : bench::moe_bench_shapes())
      if (s.device == device) shapes.push_back(s);
  }
  if (device == "cuda") {  // the GPU runner: tools/moex/bench_moe_cuda.cpp
    for (const auto& shape : shapes) {
      const bench::MoECudaBenchResult r = bench::run_moe_bench_cuda(
          shape, mode, std::max(options.warmup, 3), std::max(options.iters, 20));
      std::printf("%s\n", bench::moe_cuda_bench_json(r).c_str());
      std::fflush(stdout);
    }
    return 0;
  }
  for (const auto& shape : shapes) {
    const bench::MoEBenchResult r = bench::run_moe_bench_cpu(shape, options);
    std::printf("%s\n", args.flag("json") ? bench::moe_bench_json(r).c_str()
                                          : bench::moe_bench_text(r).c_str());
    std::fflush(stdout);
  }
  return 0;
}

int run_bench(const std::vector<std::string>& argv) {
  const Args args(argv, {"device", "shape", "mode", "iters", "warmup", "config", "tokens"},
                  {"json", "help"});
  if (args.flag("help") || args.positional().empty()) {
    print_help();
    return args.flag("help") ? 0 : 2;
  }
  const std::string what = args.positional()[0];
  MOEX_CHECK(args.positional().size() == 1, "bench takes one benchmark name, got ",
             args.positional().size());
  if (what == "moe-layer") return run_moe_layer(args);
  const std::string config = args.get("config", "configs/tiny-moe.json");
  if (what == "train-step") {
    std::printf(
        "%s\n",
        bench::run_train_step_bench(config, static_cast<int>(args.get_int("iters", 5))).c_str());
    return 0;
  }
  MOEX_CHECK(what == "decode", "unknown benchmark '", what, "' (moe-layer, train-step or decode)");
  std::printf(
      "%s\n",
      bench::run_decode_bench(config, static_cast<int>(args.get_int("tokens", 64))).c_str());
  return 0;
}

moex::cli::Command kBench("bench",
                          "benchmarks (moe-layer | train-step | decode), JSON lines with --json",
                          run_bench);

}  // namespace
}  // namespace moex::cli
