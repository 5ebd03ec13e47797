#include "train/prune.h"

#include <algorithm>
#include <cstring>

#include "model/layer_names.h"

namespace moex::train {

RankBy parse_rank_by(const std::string& name) {
  if (name == "frequency") return RankBy::kFrequency;
  if (name == "gate-mass") return RankBy::kGateMass;
  throw Error("--rank-by: '" + name + "' is not a ranking (frequency or gate-mass)");
}

const char* rank_by_name(RankBy rank_by) {
  return rank_by == RankBy::kGateMass ? "gate-mass" : "frequency";
}

ParamCounts count_parameters(const ModelConfig& config) {
  ParamCounts n;
  n.total = n.active = config.num_parameters();
  const int64_t matrices = config.activation == ExpertActivation::kSwiGLU ? 3 : 2;
  for (const LayerSpec& l : config.layers)
    if (l.moe)
      n.active -= static_cast<int64_t>(l.moe_config.num_experts - l.moe_config.top_k) * matrices *
                  config.hidden_size * l.moe_config.ffn_size;
  return n;
}

void check_prune_spec(const ModelConfig& c, const PruneSpec& spec) {
  MOEX_CHECK(spec.keep_experts > 0 || !spec.keep_layers.empty(),
             "nothing to prune: pass --keep-experts and/or --keep-layers");
  for (size_t j = 0; j < spec.keep_layers.size(); ++j) {
    const int64_t i = spec.keep_layers[j];
    MOEX_CHECK(i >= 0 && i < c.num_layers, "--keep-layers: layer ", i, " is outside [0, ",
               c.num_layers, ")");
    MOEX_CHECK(j == 0 || i > spec.keep_layers[j - 1],
               "--keep-layers: the layers must be increasing (", spec.keep_layers[j - 1], " then ",
               i, ")");
  }
  if (spec.keep_experts == 0) return;
  int moe_layers = 0;
  for (size_t i = 0; i < c.layers.size(); ++i) {
    const bool kept =
        spec.keep_layers.empty() || std::find(spec.keep_layers.begin(), spec.keep_layers.end(),
                                              static_cast<int64_t>(i)) != spec.keep_layers.end();
    if (!kept || !c.layers[i].moe) continue;
    const MoEConfig& m = c.layers[i].moe_config;
    MOEX_CHECK(spec.keep_experts >= m.top_k && spec.keep_experts < m.num_experts, "--keep-experts ",
               spec.keep_experts, " must be in [top_k = ", m.top_k, ", ", m.num_experts,
               ") for layer ", i, " (", m.num_experts, " experts)");
    ++moe_layers;
  }
  MOEX_CHECK(moe_layers > 0, "--keep-experts: no kept layer is an MoE layer");
}

ModelConfig pruned_config(const ModelConfig& config, const PruneSpec& spec) {
  check_prune_spec(config, spec);
  ModelConfig c = config;
  if (!spec.keep_layers.empty()) {
    c.layers.clear();
    for (int64_t i : spec.keep_layers) c.layers.push_back(config.layers[static_cast<size_t>(i)]);
    c.num_layers = static_cast<int64_t>(c.layers.size());
  }
  if (spec.keep_experts > 0)
    for (LayerSpec& l : c.layers)
      if (l.moe) l.moe_config.num_experts = spec.keep_experts;
  c.validate();
  return c;
}

ExpertLoads calibration_scores(model::Model& model, const std::vector<int32_t>& ids, int64_t batch,
                               int64_t seq_len, RankBy rank_by, int64_t rows_per_forward) {
  MOEX_CHECK(static_cast<int64_t>(ids.size()) == batch * seq_len && batch > 0 && seq_len > 0 &&
                 rows_per_forward > 0,
             "calibration: ", ids.size(), " ids for ", batch, " x ", seq_len);
  ExpertLoads scores;
  model::ForwardOptions opt;  // evaluation routing
  for (int64_t b0 = 0; b0 < batch; b0 += rows_per_forward) {
    const int64_t rows = std::min(rows_per_forward, batch - b0);
    const std::vector<int32_t> targets(static_cast<size_t>(rows * seq_len), -100);
    model.forward(ids.data() + b0 * seq_len, targets.data(), rows, seq_len, opt);
    if (rank_by == RankBy::kFrequency) {
      accumulate_expert_loads(model, scores);
      continue;
    }
    for (const auto& [layer, stats] : model.moe_stats()) {
      MOEX_CHECK(!stats.gate_mass.empty(),
                 "calibration: gate mass is measured on the CPU only; load the model there");
      std::vector<double>& sum = scores[layer];
      sum.resize(stats.gate_mass.size(), 0.0);
      for (size_t e = 0; e < sum.size(); ++e) sum[e] += stats.gate_mass[e];
    }
  }
  return scores;
}

namespace {

// The `keep` highest scored experts (ties to the lower index), in their original order.
std::vector<int> top_experts(const std::vector<double>& score, int keep) {
  std::vector<int> order(score.size());
  for (size_t e = 0; e < order.size(); ++e) order[e] = static_cast<int>(e);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return score[a] > score[b]; });
  order.resize(static_cast<size_t>(keep));
  std::sort(order.begin(), order.end());
  return order;
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// Tensors with one row per expert: router [E, d], selection bias [E], experts [E, ., .].
bool expert_indexed(const std::string& name) {
  for (const char* tail :
       {".mlp.gate.weight", ".mlp.gate.e_score_correction_bias", ".mlp.experts.gate_up_proj",
        ".mlp.experts.up_proj", ".mlp.experts.down_proj"})
    if (ends_with(name, tail)) return true;
  return false;
}

}  // namespace

PruneResult prune_model(const model::Model& model, const ExpertLoads& scores,
                        const PruneSpec& spec) {
  const ModelConfig& c = model.config();
  PruneResult out;
  const ModelConfig pruned = pruned_config(c, spec);
  out.layers = spec.keep_layers;
  if (out.layers.empty())
    for (int64_t i = 0; i < c.num_layers; ++i) out.layers.push_back(i);
  std::vector<std::vector<int>> experts_of(out.layers.size());  // per pruned block; empty: all
  if (spec.keep_experts > 0)
    for (size_t j = 0; j < out.layers.size(); ++j) {
      const int layer = static_cast<int>(out.layers[j]);
      if (!c.layers[static_cast<size_t>(layer)].moe) continue;
      const auto it = scores.find(layer);
      MOEX_CHECK(
          it != scores.end() && static_cast<int>(it->second.size()) ==
                                    c.layers[static_cast<size_t>(layer)].moe_config.num_experts,
          "pruning: no calibration scores for MoE layer ", layer);
      experts_of[j] = top_experts(it->second, spec.keep_experts);
      out.kept.emplace_back(layer, experts_of[j]);
    }
  out.model =
      std::make_unique<model::Model>(pruned, Device::cpu(), nullptr, model::TensorParallel{}, false,
                                     model::ModelState::inference(Device::cpu()));

  const ParamBuffer src = model.host_params();
  const ParamBuffer dst = out.model->host_params();
  for (int t = 0; t < dst.size(); ++t) {
    const std::string& name = dst.name(t);
    const std::string from_name = model::source_layer_param(name, out.layers);
    const int s = src.index_of(from_name);
    MOEX_CHECK(s >= 0, "pruning: the source model has no '", from_name, "'");
    const Tensor& from = src.tensor(s);
    const Tensor& to = dst.tensor(t);
    const int64_t block = model::layer_of_param(name);
    const std::vector<int>* experts =
        block >= 0 && expert_indexed(name) && !experts_of[static_cast<size_t>(block)].empty()
            ? &experts_of[static_cast<size_t>(block)]
            : nullptr;
    if (!experts) {
      MOEX_CHECK(from.shape() == to.shape(), "pruning: '", name, "' changed shape");
      std::memcpy(to.raw_data(), from.raw_data(), to.nbytes());
      continue;
    }
    MOEX_CHECK(to.dim(0) == static_cast<int64_t>(experts->size()), "pruning: '", name, "' has ",
               to.dim(0), " rows for ", experts->size(), " experts");
    const int64_t row = from.numel() / from.dim(0);
    for (size_t j = 0; j < experts->size(); ++j)
      std::memcpy(static_cast<float*>(to.raw_data()) + j * row,
                  static_cast<const float*>(from.raw_data()) + (*experts)[j] * row,
                  static_cast<size_t>(row) * sizeof(float));
  }
  out.model->store_host_params(dst);
  out.before = count_parameters(c);
  out.after = count_parameters(pruned);
  return out;
}

}  // namespace moex::train
