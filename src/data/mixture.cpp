#include "data/mixture.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"

namespace moex::data {

std::vector<double> temperature_probabilities(const std::vector<MixtureSource>& sources,
                                              double temperature) {
  MOEX_CHECK(!sources.empty(), "mixture: no sources");
  MOEX_CHECK(temperature > 0 && std::isfinite(temperature),
             "mixture: temperature must be > 0, got ", temperature);
  std::map<std::string, double> lang_tokens;
  double total = 0;
  for (const auto& s : sources) {
    MOEX_CHECK(s.num_tokens > 0, "mixture: source '", s.name, "' has no tokens");
    lang_tokens[s.language] += static_cast<double>(s.num_tokens);
    total += static_cast<double>(s.num_tokens);
  }
  std::map<std::string, double> lang_weight;
  double z = 0;
  for (const auto& [lang, n] : lang_tokens) {
    lang_weight[lang] = std::pow(n / total, 1.0 / temperature);
    z += lang_weight[lang];
  }
  std::vector<double> probs;
  probs.reserve(sources.size());
  for (const auto& s : sources) {
    const double share = static_cast<double>(s.num_tokens) / lang_tokens[s.language];
    probs.push_back(lang_weight[s.language] / z * share);
  }
  return probs;
}

std::vector<double> temperature_probabilities(const std::vector<MixtureSource>& sources,
                                              const MixtureTemperatures& t) {
  if (t.task == 0) return temperature_probabilities(sources, t.language);
  MOEX_CHECK(t.task > 0 && std::isfinite(t.task), "mixture: task temperature must be > 0, got ",
             t.task);
  // Tasks by temperature over their tokens, then languages within each task.
  std::map<std::string, std::vector<size_t>> by_task;
  for (size_t i = 0; i < sources.size(); ++i) by_task[sources[i].task].push_back(i);
  std::map<std::string, double> task_weight;
  double z = 0;
  for (const auto& [task, members] : by_task) {
    double n = 0;
    for (size_t i : members) n += static_cast<double>(sources[i].num_tokens);
    z += task_weight[task] = std::pow(n, 1.0 / t.task);
  }
  std::vector<double> probs(sources.size(), 0.0);
  for (const auto& [task, members] : by_task) {
    std::vector<MixtureSource> group;
    for (size_t i : members) group.push_back(sources[i]);
    const auto own = t.language_by_task.find(task);
    const std::vector<double> within = temperature_probabilities(
        group, own != t.language_by_task.end() ? own->second : t.language);
    for (size_t j = 0; j < members.size(); ++j)
      probs[members[j]] = task_weight[task] / z * within[j];
  }
  return probs;
}

MixtureSampler::MixtureSampler(std::vector<MixtureSource> sources,
                               const MixtureTemperatures& temperatures, uint64_t seed)
    : sources_(std::move(sources)), seed_(seed) {
  probs_ = temperature_probabilities(sources_, temperatures);
  double c = 0;
  for (double p : probs_) cumulative_.push_back(c += p);
  cumulative_.back() = 1.0;
}

size_t MixtureSampler::draw(uint64_t index) const {
  // 53 random bits -> [0, 1), from two Philox words of the draw's own counter.
  const uint64_t hi = philox_u32(seed_, 0x6d6978ull, 2 * index);
  const uint64_t lo = philox_u32(seed_, 0x6d6978ull, 2 * index + 1);
  const double u = static_cast<double>(((hi << 32) | lo) >> 11) * 0x1.0p-53;
  const auto it = std::upper_bound(cumulative_.begin(), cumulative_.end(), u);
  return std::min(static_cast<size_t>(it - cumulative_.begin()), cumulative_.size() - 1);
}

size_t MixtureSampler::next() {
  return draw(position_++);
}

namespace {

std::vector<MixtureSource> sources_of(std::vector<MixtureDataset::Input>& inputs) {
  std::vector<MixtureSource> out;
  for (auto& in : inputs) {
    MOEX_CHECK(in.dataset != nullptr, "mixture: source '", in.source.name, "' has no dataset");
    if (in.source.num_tokens == 0) in.source.num_tokens = in.dataset->num_tokens();
    out.push_back(in.source);
  }
  return out;
}

}  // namespace

MixtureDataset::MixtureDataset(std::vector<Input> inputs, int64_t seq_len,
                               const MixtureTemperatures& temperatures, uint64_t seed,
                               Packing packing)
    : mixer_(sources_of(inputs), temperatures, seed) {
  for (size_t i = 0; i < inputs.size(); ++i) {
    // Each source gets its own shuffling stream, derived from the seed.
    samplers_.emplace_back(inputs[i].dataset, seq_len, seed * 1000003ull + i + 1, inputs[i].mask,
                           packing);
  }
}

size_t MixtureDataset::next(int32_t* out, int32_t* mask_out) {
  const size_t src = mixer_.next();
  samplers_[src].next(out, mask_out);
  return src;
}

std::string MixtureDataset::state_json() const {
  nlohmann::json j;
  j["mixture_position"] = mixer_.position();
  j["sources"] = nlohmann::json::array();
  for (size_t i = 0; i < samplers_.size(); ++i) {
    j["sources"].push_back({{"name", mixer_.sources()[i].name},
                            {"state", nlohmann::json::parse(samplers_[i].state().to_json())}});
  }
  return j.dump();
}

void MixtureDataset::restore_json(const std::string& text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    MOEX_THROW("mixture state: not valid JSON (", e.what(), ")");
  }
  MOEX_CHECK(
      j.is_object() && j.contains("mixture_position") && j["mixture_position"].is_number_unsigned(),
      "mixture state: field mixture_position missing or not a non-negative integer");
  MOEX_CHECK(
      j.contains("sources") && j["sources"].is_array() && j["sources"].size() == samplers_.size(),
      "mixture state: field sources must list ", samplers_.size(), " sources");
  for (size_t i = 0; i < samplers_.size(); ++i) {
    const auto& s = j["sources"][i];
    MOEX_CHECK(s.is_object() && s.contains("name") && s["name"] == mixer_.sources()[i].name,
               "mixture state: sources[", i, "].name does not match source '",
               mixer_.sources()[i].name, "'");
    MOEX_CHECK(s.contains("state"), "mixture state: sources[", i, "].state missing");
    samplers_[i].restore(SamplerState::from_json(s["state"].dump()));
  }
  mixer_.set_position(j["mixture_position"].get<uint64_t>());
}

}  // namespace moex::data
