// How the ranks of a run divide the work (docs/parallelism.md), DeepSpeed-TED style:
//   tp   tensor parallel: ranks that split one layer's attention heads and dense FFN columns;
//   dp   data parallel = world / tp: replicas of the non-expert weights, each on its own batch;
//   ep   expert parallel (divides dp): each rank of an ep group holds E / ep experts per MoE
//        layer and computes them for the tokens of the whole group;
//   edp  expert data parallel = dp / ep: ranks holding the same experts (their gradients are
//        summed over this group only).
//
// Rank mapping (tp innermost, then ep, then edp; the layout of DeepSpeed and Megatron):
//   tp_rank  = rank % tp            dp_rank  = rank / tp
//   ep_rank  = dp_rank % ep         edp_rank = dp_rank / ep
// so rank = (edp_rank * ep + ep_rank) * tp + tp_rank. Example, world 8, tp 2, ep 2 (dp 4, edp 2):
//   rank      0 1 2 3 4 5 6 7
//   tp_rank   0 1 0 1 0 1 0 1     tp groups  {0,1} {2,3} {4,5} {6,7}
//   dp_rank   0 0 1 1 2 2 3 3     dp groups  {0,2,4,6} {1,3,5,7}
//   ep_rank   0 0 1 1 0 0 1 1     ep groups  {0,2} {1,3} {4,6} {5,7}
//   edp_rank  0 0 0 0 1 1 1 1     edp groups {0,4} {1,5} {2,6} {3,7}
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "dist/communicator.h"

namespace moex::dist {

// The "parallel" object of a training config. Defaults: one rank per data-parallel replica.
struct ParallelConfig {
  int64_t tp = 1;
  int64_t ep = 1;
  int64_t zero_stage = 0;  // 0, 1 or 2
  // ZeRO's tiled optimizer: the most elements one optimizer call or one gradient/weight
  // collective handles at once (16 M: 64 MiB of fp32).
  int64_t tile_elements = int64_t{1} << 24;
  bool offload = false;  // ZeRO-Offload: master weights and Adam state in host memory
  bool dtd = false;      // Duplicate Token Dropping (needs tp > 1 and ep > 1)
  bool cac = false;      // Communication-aware Activation Checkpointing
  // Expert tensor-slicing: each expert's hidden width split over the tp ranks (needs tp > 1).
  bool expert_slicing = false;
  // ZeRO on GPU ranks: the fp32 master weights sharded with the moments (on the GPUs, or with
  // offload on the hosts), the model holding bf16 weights (needs zero_stage > 0, training.device
  // "cuda"). Unset: on exactly then, unless optimizer.master_dtype is "bf16" (there is no fp32
  // master then; train::shards_master).
  std::optional<bool> shard_master;
  // Data-parallel gradient sums start as each block's backward ends (the step's last backward;
  // every micro-batch's under ZeRO stage 2) instead of after backward; on GPU ranks they run on
  // the communicator's stream beside the blocks still to go (docs/parallelism.md §Overlapped
  // gradient reductions).
  bool overlap_comm = false;
};

struct ParallelLayout {
  int world = 1, rank = 0;
  int tp = 1, dp = 1, ep = 1, edp = 1;
  int tp_rank = 0, dp_rank = 0, ep_rank = 0, edp_rank = 0;

  // Checks `config` against the world size, one error per problem naming `source` (the config
  // file) and the field: world divisible by tp, ep dividing dp; offload over several ranks needs
  // ZeRO (each rank steps its shard on the host); dtd needs tp > 1 and ep > 1.
  static ParallelLayout make(int world_size, int rank, const ParallelConfig& config,
                             const std::string& source);
  // The mapping alone, for sizes already checked (tp divides world_size, ep divides dp); it also
  // serves layouts that are not built yet (tests of the mapping and of the groups).
  static ParallelLayout map(int world_size, int rank, int tp, int ep);
};

// The sub-groups of one rank, split from the world group by the layout's mapping; each is
// ordered by the rank index it is named after (ep->rank() == layout.ep_rank, and so on).
struct ProcessGroups {
  std::unique_ptr<Communicator> tp, dp, ep, edp;
  static ProcessGroups make(Communicator& world, const ParallelLayout& layout);
};

}  // namespace moex::dist
