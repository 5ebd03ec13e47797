// `moex bench moe-layer`: the shape table, the FLOP count and the JSON line, shared by the CPU
// runner here (run_moe_bench_cpu) and the CUDA runner in bench_moe_cuda.{h,cpp}.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "moe/moe_config.h"

namespace moex::bench {

struct MoEBenchShape {
  std::string name;
  std::string device;  // the device the shape is sized for: "cpu" or "cuda"
  int64_t tokens = 0;  // T
  int64_t hidden = 0;  // d
  int64_t ffn = 0;     // F per expert
  int num_experts = 0;
  int top_k = 1;
  ExpertActivation activation = ExpertActivation::kGelu;
  float capacity_factor = 1.0f;
};

// Every known shape; moe_bench_shape() finds one by name (an error lists the names).
const std::vector<MoEBenchShape>& moe_bench_shapes();
const MoEBenchShape& moe_bench_shape(const std::string& name);

// The layer config of a shape: DeepSpeed-style defaults (softmax, position drops, min_capacity 4).
MoEConfig moe_bench_config(const MoEBenchShape& shape, bool dropless);

// Expert FLOPs of one forward over `routed` kept routes: 2 d F per projection matrix per route,
// with 2 matrices (GELU) or 3 (SwiGLU: gate, up, down). Forward+backward is 3x this.
double moe_expert_flops(const MoEBenchShape& shape, int64_t routed);

// Expert parallelism (--ep > 1 under mpirun), on either device: the group size, the world rank
// that made the result (only rank 0 prints), and per forward+backward the time in the token
// exchanges and the bytes of expert rows this rank sent to the others. No dense comparison then.
// --recompute / --cac: forward+backward ran as an activation-checkpointed layer runs it (its time
// and rate count the recompute), and the bytes the recompute did not send under CAC
// (docs/parallelism.md §CAC).
struct MoEExchangeReport {
  int ep = 1, rank = 0, ranks = 1;
  double a2a_ms = 0;
  int64_t a2a_bytes = 0;
  bool recompute = false, cac = false;
  int64_t a2a_saved_bytes = 0;
};

// The report's JSON keys, ", " + "\"ep\": ..., \"a2a_saved_bytes\": ..." (no braces);
// a2a_share is a2a_ms over fwdbwd_ms.
std::string moe_exchange_json(const MoEExchangeReport& x, double fwdbwd_ms);

struct MoEBenchResult {
  std::string shape, device, mode;
  int64_t routed = 0;  // kept routes (the rows the experts computed)
  double fwd_ms = 0, fwdbwd_ms = 0;
  double fwd_gflops = 0, fwdbwd_gflops = 0, dense_fwdbwd_gflops = 0;
  MoEExchangeReport exchange;
};

struct MoEBenchOptions {
  bool dropless = false;
  int warmup = 1;
  int iters = 5;
  int ep = 1;  // > 1: experts spread over groups of ep MPI ranks
  // Forward+backward as an activation-checkpointed layer: a first pass that keeps nothing, a
  // recompute with its routing, then backward; with cac the recompute reuses the first pass's
  // all-to-all results (needs ep > 1).
  bool recompute = false;
  bool cac = false;
};

// Expert parallelism under mpirun: the world's groups of ep consecutive ranks, as the training
// layout makes them (checks that ep divides the number of ranks); this rank's world rank and the
// world size go to *rank and *ranks.
std::unique_ptr<dist::Communicator> split_expert_groups(int ep, int* rank, int* ranks);
// The report of the exchanges of options.iters timed forward+backward calls, from their totals.
MoEExchangeReport exchange_report(const MoEBenchOptions& options, int rank, int ranks,
                                  double a2a_ms, int64_t bytes_sent, int64_t bytes_saved);

// One JSON object on one line: shape, device, mode, fwd_ms, fwdbwd_ms, fwd_gflops, fwdbwd_gflops,
// routed_tokens, then dense_fwdbwd_gflops and moe_over_dense, or with ep > 1: ep, ranks, a2a_ms,
// a2a_bytes, a2a_share (of fwdbwd_ms), recompute, cac, a2a_saved_bytes.
std::string moe_bench_json(const MoEBenchResult& result);
std::string moe_bench_text(const MoEBenchResult& result);

// The CPU layer in f32, and a dense FFN with the same FLOPs timed in the same process; with
// options.ep > 1 the layer's experts are spread over groups of ep ranks of the MPI job, each rank
// routing its own tokens (docs/parallelism.md), and the exchanges are timed instead.
MoEBenchResult run_moe_bench_cpu(const MoEBenchShape& shape, const MoEBenchOptions& options);

}  // namespace moex::bench
