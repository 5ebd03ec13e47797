// moex bench moe-layer|train-step|decode: benchmarks that print JSON lines (docs/architecture.md
// §Testing: benchmarks are not tests; peers are compared side by side in one run on the same
// machine).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "args.h"
#include "bench_model.h"
#include "bench_moe.h"
#include "bench_moe_cuda.h"
#include "command.h"
#include "core/error.h"
#include "core/tensor.h"
#include "sampling_flags.h"
#include "train/train_config.h"

namespace moex::cli {
namespace {

void print_help() {
  std::printf(
      "usage: moex bench moe-layer [--device cpu|cuda] [--shape NAME] [--mode capacity|dropless]\n"
      "                            [--iters N] [--warmup N] [--json] [--ep N] [--recompute]\n"
      "                            [--cac]\n"
      "       moex bench train-step [--config F] [--device cpu|cuda] [--iters N] [--warmup N]\n"
      "                             [--offload] [--moments-dtype fp32|bf16] [--grads-dtype "
      "fp32|bf16]\n"
      "                             [--master-dtype fp32|bf16]\n"
      "                             forward+backward+AdamW: tokens/s, step ms, MFU, peak memory\n"
      "       moex bench decode [--config F | --shape mixtral4l] [--device cpu|cuda] [--batch "
      "B,...]\n"
      "                         [--tokens N] [--prompt N] [--temperature T --top-k K --top-p P\n"
      "                         --seed S]   decode of B sequences (each B of a comma list, one\n"
      "                         model; greedy unless --temperature > 0): ms/step against the\n"
      "                         bandwidth floor\n\n"
      "  moe-layer   MoE layer forward and forward+backward against a dense FFN with the same "
      "FLOPs\n"
      "  --device    cpu (default) or cuda\n"
      "  --ep        under mpirun: experts spread over groups of N ranks, each rank routing its\n"
      "              own tokens; reports the token exchanges' time and bytes (rank 0 prints).\n"
      "              cuda: one GPU per rank over NCCL (MOEX_GPU_COLLECTIVES=host: ranks may share "
      "one)\n"
      "  --recompute fwd+bwd as an activation-checkpointed layer: first pass, recompute, backward\n"
      "  --cac       as --recompute, the recompute reusing the first pass's all-to-alls (--ep > "
      "1)\n"
      "  --shape     one shape (default: every shape sized for the device):\n");
  for (const auto& s : bench::moe_bench_shapes()) {
    std::printf("                %-12s %-4s T=%lld d=%lld F=%lld E=%d k=%d %s cf=%.2f\n",
                s.name.c_str(), s.device.c_str(), static_cast<long long>(s.tokens),
                static_cast<long long>(s.hidden), static_cast<long long>(s.ffn), s.num_experts,
                s.top_k, s.activation == ExpertActivation::kSwiGLU ? "swiglu" : "gelu",
                s.capacity_factor);
  }
  std::printf(
      "  --mode      capacity (default) or dropless; cuda also dropless-padded, "
      "dropless-grouped\n"
      "  --iters     timed runs per measurement, >= 1, median reported (default 5 on cpu, 20 on "
      "cuda)\n"
      "  --warmup    untimed runs first, >= 0 (default 1 on cpu, 3 on cuda)\n"
      "  --json      one JSON object per line per shape (default: one text line)\n"
      "  --tokens    decode: new tokens to generate, >= 1 (default 64)\n"
      "  --prompt    decode: prompt tokens of each sequence, prefilled in one step (default 16)\n"
      "  --moments-dtype  train-step: fp32 or bf16 Adam moments (overrides "
      "optimizer.moments_dtype)\n"
      "  --grads-dtype    train-step: fp32 or bf16 gradients on one GPU (overrides "
      "optimizer.grads_dtype)\n"
      "  --master-dtype   train-step: fp32 or bf16 master weights on one GPU (overrides "
      "optimizer.master_dtype)\n");
}

// --batch of the decode benchmark: "B" or "B1,B2,..." (each >= 1).
std::vector<int> batch_list(const std::string& text) {
  std::vector<int> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    char* end = nullptr;
    const long b = std::strtol(item.c_str(), &end, 10);
    MOEX_CHECK(!item.empty() && end != nullptr && *end == '\0' && b >= 1 && b <= 4096, "--batch: '",
               item, "' is not a batch size in [1, 4096] (give B or B1,B2,...)");
    out.push_back(static_cast<int>(b));
  }
  MOEX_CHECK(!out.empty(), "--batch: no batch size given");
  return out;
}

// Flags that a benchmark does not read are errors rather than silently ignored.
void check_flags(const Args& args, const std::string& what, const std::set<std::string>& takes) {
  for (const char* flag : {"device", "shape", "mode", "iters", "warmup", "config", "tokens", "json",
                           "recompute", "cac"}) {
    MOEX_CHECK(!args.has(flag) || takes.count(flag), "bench ", what, " does not take --", flag);
  }
}

// A count flag's value, checked before any work starts.
int count_flag(const Args& args, const std::string& flag, int64_t fallback, int64_t min) {
  const int64_t v = args.get_int(flag, fallback);
  MOEX_CHECK(v >= min && v <= 1000000, "--", flag, " must be between ", min, " and 1000000, got ",
             v);
  return static_cast<int>(v);
}

int run_moe_layer(const Args& args) {
  check_flags(args, "moe-layer",
              {"device", "shape", "mode", "iters", "warmup", "json", "ep", "recompute", "cac"});
  const std::string device = args.get("device", "cpu");
  MOEX_CHECK(device == "cpu" || device == "cuda", "--device must be cpu or cuda, got '", device,
             "'");
  const std::string mode = args.get("mode", "capacity");
  MOEX_CHECK(mode == "capacity" || mode == "dropless" ||
                 (device == "cuda" && (mode == "dropless-padded" || mode == "dropless-grouped")),
             "--mode must be capacity or dropless, got '", mode, "'");
  // GPU timings are shorter and noisier, so the cuda defaults run more; given values are used
  // as they are on both devices.
  const bool cuda = device == "cuda";
  bench::MoEBenchOptions options;
  options.dropless = mode == "dropless";
  options.iters = count_flag(args, "iters", cuda ? 20 : 5, 1);
  options.warmup = count_flag(args, "warmup", cuda ? 3 : 1, 0);
  options.ep = count_flag(args, "ep", 1, 1);
  options.recompute = args.flag("recompute");
  options.cac = args.flag("cac");
  MOEX_CHECK(!options.cac || options.ep > 1,
             "--cac needs --ep > 1 (without expert parallelism there is no all-to-all to keep)");
  const bool json = args.flag("json");

  std::vector<bench::MoEBenchShape> shapes;
  if (args.has("shape")) {
    shapes.push_back(bench::moe_bench_shape(args.get("shape")));
    // A GPU-sized shape on the default device would run for minutes on the CPU: say so instead.
    MOEX_CHECK(args.has("device") || shapes.back().device == device, "--shape ", shapes.back().name,
               " is sized for --device ", shapes.back().device, "; pass --device ",
               shapes.back().device, " (or --device ", device, " to run it there anyway)");
  } else {
    for (const auto& s : bench::moe_bench_shapes())
      if (s.device == device) shapes.push_back(s);
  }
  for (const auto& shape : shapes) {
    std::string line;
    if (cuda) {  // the GPU runner: tools/moex/bench_moe_cuda.cpp
      const bench::MoECudaBenchResult r = bench::run_moe_bench_cuda(shape, mode, options);
      if (r.exchange.rank != 0) continue;  // under mpirun, rank 0 reports
      line = json ? bench::moe_cuda_bench_json(r) : bench::moe_cuda_bench_text(r);
    } else {
      const bench::MoEBenchResult r = bench::run_moe_bench_cpu(shape, options);
      if (r.exchange.rank != 0) continue;  // under mpirun, rank 0 reports
      line = json ? bench::moe_bench_json(r) : bench::moe_bench_text(r);
    }
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  }
  return 0;
}

int run_bench(const std::vector<std::string>& argv) {
  const Args args(
      argv,
      {"device", "shape", "mode", "iters", "warmup", "config", "tokens", "batch", "ep", "prompt",
       "temperature", "top-k", "top-p", "seed", "moments-dtype", "grads-dtype", "master-dtype"},
      {"json", "help", "recompute", "cac", "offload"});
  if (args.flag("help") || args.positional().empty()) {
    print_help();
    return args.flag("help") ? 0 : 2;
  }
  const std::string what = args.positional()[0];
  MOEX_CHECK(args.positional().size() == 1, "bench takes one benchmark name, got ",
             args.positional().size());
  if (what == "moe-layer") return run_moe_layer(args);
  MOEX_CHECK(what == "train-step" || what == "decode", "unknown benchmark '", what,
             "' (moe-layer, train-step or decode)");
  const std::string config = args.get("config", "configs/tiny-moe.json");
  if (what == "train-step") {
    check_flags(args, what,
                {"config", "device", "iters", "warmup", "json", "offload", "moments-dtype",
                 "grads-dtype", "master-dtype"});
    const int iters = count_flag(args, "iters", 5, 1);
    const int warmup = count_flag(args, "warmup", 1, 0);
    if (args.has("device")) moex::Device::parse(args.get("device"), "--device");  // before work
    const auto& names = train::OptimizerConfig::precision_names();
    auto precision = [&](const char* flag, const char* field) {
      const std::string value = args.get(flag, "");
      MOEX_CHECK(value.empty() || std::find(names.begin(), names.end(), value) != names.end(), "--",
                 flag, " must be fp32 or bf16 (optimizer.", field, "), got '", value, "'");
      return value;
    };
    const bench::StateDTypeFlags dtypes{precision("moments-dtype", "moments_dtype"),
                                        precision("grads-dtype", "grads_dtype"),
                                        precision("master-dtype", "master_dtype")};
    std::printf("%s\n", bench::run_train_step_bench(config, args.get("device"), warmup, iters,
                                                    args.flag("offload"), dtypes)
                            .c_str());
    return 0;
  }
  check_flags(args, what,
              {"config", "shape", "device", "batch", "tokens", "prompt", "json", "temperature",
               "top-k", "top-p", "seed"});
  const infer::SamplingParams sampling = sampling_from_flags(args);
  const int tokens = count_flag(args, "tokens", 64, 2);
  const int prompt = count_flag(args, "prompt", 16, 1);
  const std::vector<int> batches = batch_list(args.get("batch", "1"));
  if (args.has("device")) moex::Device::parse(args.get("device"), "--device");  // before work
  for (const std::string& line : bench::run_decode_bench(
           config, args.get("shape"), args.get("device"), batches, tokens, prompt, sampling))
    std::printf("%s\n", line.c_str());
  return 0;
}

moex::cli::Command kBench("bench",
                          "benchmarks (moe-layer | train-step | decode), JSON lines with --json",
                          run_bench);

}  // namespace
}  // namespace moex::cli
