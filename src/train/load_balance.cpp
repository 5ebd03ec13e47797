#include "train/load_balance.h"

#include <string>

#include "ops/elementwise.h"

namespace moex::train {

void accumulate_expert_loads(const model::Model& model, ExpertLoads& loads) {
  for (const auto& [layer, stats] : model.moe_stats()) {
    std::vector<double>& sum = loads[layer];
    sum.resize(stats.load.size(), 0.0);
    for (size_t e = 0; e < stats.load.size(); ++e) sum[e] += static_cast<double>(stats.load[e]);
  }
}

int update_selection_bias(model::Model& model, const ExpertLoads& loads, double rate) {
  int moved = 0;
  for (const auto& [layer, load] : loads) {
    const std::string name =
        "model.layers." + std::to_string(layer) + ".mlp.gate.e_score_correction_bias";
    const int idx = model.params().index_of(name);
    MOEX_CHECK(idx >= 0, "load balancing: layer ", layer, " has no selection bias (", name, ")");
    const Tensor& bias = model.params().tensor(idx);
    MOEX_CHECK(bias.numel() == static_cast<int64_t>(load.size()), "load balancing: layer ", layer,
               " has ", bias.numel(), " experts, the loads ", load.size());
    double mean = 0;
    for (double l : load) mean += l;
    mean /= static_cast<double>(load.size());
    // The bias is a handful of numbers: update an fp32 host copy of its master (the model's, or
    // its fp32 copy where the model holds bf16), write it back (on any device, into an fp32 or
    // bf16 master, and the fp32 copy).
    const Tensor& fp32 = model.fp32_weight(idx);
    Tensor host = Tensor::empty(bias.shape(), DType::kF32);
    ops::copy(fp32.defined() ? fp32 : bias, host);
    float* b = host.data<float>();
    for (size_t e = 0; e < load.size(); ++e) {
      const double gap = mean - load[e];
      b[e] += static_cast<float>(rate * ((gap > 0) - (gap < 0)));
    }
    ops::copy(host, bias);
    if (fp32.defined()) {
      ops::copy(host, fp32);
      fp32.mark_written();
    }
    ++moved;
  }
  // The MoE layers read the master copy of the bias; a new version makes the GPU layer
  // upload it again (the bf16 compute copy of a bias is never read).
  model.params().flat().mark_written();
  return moved;
}

}  // namespace moex::train
