#include "train/prune.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/json_reader.h"

namespace moex::train {

ExpertLoads calibration_loads(model::Model& model, const std::vector<int32_t>& ids, int64_t batch,
                              int64_t seq_len) {
  MOEX_CHECK(static_cast<int64_t>(ids.size()) == batch * seq_len && batch > 0 && seq_len > 0,
             "calibration: ", ids.size(), " ids for ", batch, " x ", seq_len);
  std::vector<int32_t> targets(ids.size(), -100);
  model::ForwardOptions opt;  // evaluation routing
  model.forward(ids.data(), targets.data(), batch, seq_len, opt);
  ExpertLoads loads;
  accumulate_expert_loads(model, loads);
  return loads;
}

namespace {

// The `keep` most loaded experts, in their original order.
std::vector<int> top_experts(const std::vector<double>& load, int keep) {
  std::vector<int> order(load.size());
  for (size_t e = 0; e < order.size(); ++e) order[e] = static_cast<int>(e);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return load[a] > load[b]; });
  order.resize(static_cast<size_t>(keep));
  std::sort(order.begin(), order.end());
  return order;
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

}  // namespace

PruneResult prune_experts(const model::Model& model, const std::string& model_json,
                          const ExpertLoads& loads, int keep) {
  const ModelConfig& c = model.config();
  PruneResult out;
  std::vector<int64_t> counts;  // the new expert count of each MoE layer
  for (size_t i = 0; i < c.layers.size(); ++i) {
    if (!c.layers[i].moe) continue;
    const MoEConfig& m = c.layers[i].moe_config;
    MOEX_CHECK(keep >= m.top_k && keep < m.num_experts, "--keep-experts ", keep,
               " must be in [top_k = ", m.top_k, ", ", m.num_experts, ") for layer ", i);
    const auto it = loads.find(static_cast<int>(i));
    MOEX_CHECK(it != loads.end() && static_cast<int>(it->second.size()) == m.num_experts,
               "pruning: no calibration loads for MoE layer ", i);
    out.kept.emplace_back(static_cast<int>(i), top_experts(it->second, keep));
    counts.push_back(keep);
  }
  MOEX_CHECK(!counts.empty(), "pruning: the model has no MoE layer");
  nlohmann::json js = nlohmann::json::parse(model_json);
  js["moe"]["num_experts"] =
      counts.size() == 1 ? nlohmann::json(counts[0]) : nlohmann::json(counts);
  out.model_json = js.dump(2);
  out.model = std::make_unique<model::Model>(
      ModelConfig::from_json(JsonReader::from_string(out.model_json, "pruned config")));

  const ParamBuffer src = model.host_params();
  const ParamBuffer dst = out.model->host_params();
  for (int t = 0; t < dst.size(); ++t) {
    const std::string& name = dst.name(t);
    const int s = src.index_of(name);
    MOEX_CHECK(s >= 0, "pruning: the source model has no '", name, "'");
    const Tensor& from = src.tensor(s);
    const Tensor& to = dst.tensor(t);
    if (from.shape() == to.shape()) {
      std::memcpy(to.raw_data(), from.raw_data(), to.nbytes());
      continue;
    }
    // Expert-indexed tensors: router [E, d], selection bias [E], experts [E, ., .].
    const bool expert_indexed = ends_with(name, ".mlp.gate.weight") ||
                                ends_with(name, ".mlp.gate.e_score_correction_bias") ||
                                ends_with(name, ".mlp.experts.gate_up_proj") ||
                                ends_with(name, ".mlp.experts.up_proj") ||
                                ends_with(name, ".mlp.experts.down_proj");
    const int layer = std::stoi(name.substr(std::string("model.layers.").size()));
    const auto kept = std::find_if(out.kept.begin(), out.kept.end(),
                                   [&](const auto& k) { return k.first == layer; });
    MOEX_CHECK(expert_indexed && kept != out.kept.end(), "pruning: '", name, "' changed shape");
    const int64_t row = from.numel() / from.dim(0);
    for (size_t j = 0; j < kept->second.size(); ++j)
      std::memcpy(static_cast<float*>(to.raw_data()) + j * row,
                  static_cast<const float*>(from.raw_data()) + kept->second[j] * row,
                  static_cast<size_t>(row) * sizeof(float));
  }
  out.model->store_host_params(dst);
  out.params_before = c.num_parameters();
  out.params_after = out.model->config().num_parameters();
  return out;
}

}  // namespace moex::train
