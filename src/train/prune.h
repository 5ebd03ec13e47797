// Expert pruning (Kim et al.: keep most of an MoE's gain at a fraction of its inference cost):
// every MoE layer keeps the K experts that calibration tokens routed to most often. The router's
// rows, the selection bias and the expert weights of the kept experts are carried over in their
// original order; everything else is copied unchanged.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/model.h"
#include "train/load_balance.h"

namespace moex::train {

struct PruneResult {
  std::unique_ptr<model::Model> model;                 // on the CPU
  std::string model_json;                              // the pruned model's moex config
  std::vector<std::pair<int, std::vector<int>>> kept;  // per MoE layer: the kept experts
  int64_t params_before = 0, params_after = 0;
};

// Routes per expert of every MoE layer over `ids` [batch, seq_len] (evaluation routing, no drops
// counted away: loads are taken before dropping).
ExpertLoads calibration_loads(model::Model& model, const std::vector<int32_t>& ids, int64_t batch,
                              int64_t seq_len);

// Keeps the `keep` most loaded experts of each MoE layer (ties to the lower index). `model_json`
// is the source model's moex config text; every MoE layer must have more than `keep` experts
// and at least top_k of them must stay.
PruneResult prune_experts(const model::Model& model, const std::string& model_json,
                          const ExpertLoads& loads, int keep);

}  // namespace moex::train
