// Auxiliary-loss-free load balancing (DeepSeek-V3): after each optimizer step, every MoE layer's
// selection bias (gate.e_score_correction_bias, added to the router scores for choosing experts
// only) moves toward balance,
//   bias_e += rate * sign(mean load - load_e),
// so overloaded experts become less likely to be chosen and idle ones more, with no gradient
// through the router. The loads are the routes each expert received over the step (all
// micro-batches, all data-parallel ranks), before any dropping.
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include "model/model.h"

namespace moex::train {

// Per MoE layer (by layer index): routes per expert over one step.
using ExpertLoads = std::map<int, std::vector<double>>;

// Adds the last forward's per-layer loads (Model::moe_stats) into `loads`.
void accumulate_expert_loads(const model::Model& model, ExpertLoads& loads);

// Applies the rule to every layer of `loads` that has a selection bias; returns how many layers
// it moved. Layers without one are an error (the config validation keeps that from happening).
// Where the model holds bf16 weights with fp32 copies of its biases (Model::fp32_weight, a
// sharded ZeRO master), the rule updates the fp32 copy and writes it rounded into the model.
int update_selection_bias(model::Model& model, const ExpertLoads& loads, double rate);

}  // namespace moex::train
