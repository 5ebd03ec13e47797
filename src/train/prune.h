// Pruning an MoE model for inference (docs/distill.md §Pruning):
//   - expert pruning (Kim et al.: most of an MoE's gain at a fraction of its inference cost):
//     every MoE layer keeps the K experts that calibration tokens routed to most, by route count
//     ("frequency") or by the summed combine weights of those routes ("gate mass");
//   - layer dropping (Mixture-of-Students): a chosen subset of the blocks, in order, with the
//     embedding, final norm and head kept.
// The router's rows, the selection bias and the weights of the kept experts are carried over in
// their original order; every other tensor is copied unchanged.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/model.h"
#include "train/load_balance.h"

namespace moex::train {

enum class RankBy { kFrequency, kGateMass };
// "frequency" or "gate-mass"; anything else is an Error naming --rank-by.
RankBy parse_rank_by(const std::string& name);
const char* rank_by_name(RankBy rank_by);

struct PruneSpec {
  int keep_experts = 0;              // experts per MoE layer; 0: every expert stays
  std::vector<int64_t> keep_layers;  // source blocks kept, increasing; empty: every block
  RankBy rank_by = RankBy::kFrequency;
};

// All parameters, and those one token computes with: the total less the experts a token does not
// visit (E - top_k per MoE layer).
struct ParamCounts {
  int64_t total = 0, active = 0;
};
ParamCounts count_parameters(const ModelConfig& config);

struct PruneResult {
  // On the CPU, made for inference (no gradient buffer: pruning writes a model to serve or save).
  std::unique_ptr<model::Model> model;
  std::vector<int64_t> layers;  // the source block of each block of the pruned model
  std::vector<std::pair<int, std::vector<int>>> kept;  // per kept MoE block (source index)
  ParamCounts before, after;
};

// Errors (naming the flag) for a spec the model cannot take: K > E or K < top_k in a kept MoE
// layer, nothing removed, a layer index out of range or repeated. Called before calibration, so a
// bad flag fails before any work.
void check_prune_spec(const ModelConfig& config, const PruneSpec& spec);

// The model's config with the spec applied (blocks selected, expert counts set).
ModelConfig pruned_config(const ModelConfig& config, const PruneSpec& spec);

// Per MoE layer: each expert's score over `ids` [batch, seq_len] (evaluation routing; routes taken
// before any dropping): its route count, or the sum of its routes' combine weights. Runs
// `rows_per_forward` sequences at a time.
ExpertLoads calibration_scores(model::Model& model, const std::vector<int32_t>& ids, int64_t batch,
                               int64_t seq_len, RankBy rank_by, int64_t rows_per_forward = 8);

// Applies `spec`; `scores` (calibration_scores) is needed when spec.keep_experts > 0. The kept
// experts are the highest scored (ties to the lower index), in their original order.
PruneResult prune_model(const model::Model& model, const ExpertLoads& scores,
                        const PruneSpec& spec);

}  // namespace moex::train
