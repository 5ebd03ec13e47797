// Multilingual / multitask mixing: which source the next training sequence comes from.
//
// Languages are sampled by temperature (Kim et al. 2019, "Towards Multilingual NMT...";
// also Conneau et al. XLM-R with T = 1/alpha): p_l ∝ (n_l / N)^(1/T), with n_l the tokens of
// language l and N the total. T = 1 samples in proportion to the data, larger T flattens toward
// uniform over languages. Within a language, sources share p_l in proportion to their tokens.
// Draws are a pure function of (seed, draw index), so the state is one counter.
//
// Multitask (MixtureTemperatures::task > 0): tasks are sampled first, p_t ∝ n_t^(1/T_task), then
// languages within the task, p_{l|t} ∝ n_{t,l}^(1/T_lang(t)) (mBART / Kim et al.), then sources
// within (task, language) by tokens. docs/data.md §Mixing has the worked formulas.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "data/indexed_dataset.h"

namespace moex::data {

struct MixtureSource {
  std::string name;      // "handbook.en", "bible.en-es"
  std::string language;  // the group that temperature applies over ("en", "es", "en-es", ...)
  int64_t num_tokens = 0;
  std::string task = "lm";  // "lm", "translate", "denoise": the group of the task temperature
};

struct MixtureTemperatures {
  double language = 1.0;  // languages (within a task when `task` > 0)
  // > 0: sample the task first with this temperature; 0: one level over languages, as above.
  double task = 0;
  std::map<std::string, double> language_by_task;  // a task's own language temperature
};

// Probability of each source; errors name the source with no tokens or a bad temperature.
std::vector<double> temperature_probabilities(const std::vector<MixtureSource>& sources,
                                              double temperature);
// The same with task and per-task language temperatures; equals the one above when task == 0.
std::vector<double> temperature_probabilities(const std::vector<MixtureSource>& sources,
                                              const MixtureTemperatures& temperatures);

class MixtureSampler {
 public:
  MixtureSampler(std::vector<MixtureSource> sources, const MixtureTemperatures& temperatures,
                 uint64_t seed);

  // Index of the source of the next sequence; advances.
  size_t next();
  // The source of draw `index` (without moving).
  size_t draw(uint64_t index) const;
  const std::vector<double>& probabilities() const { return probs_; }
  const std::vector<MixtureSource>& sources() const { return sources_; }

  uint64_t position() const { return position_; }
  void set_position(uint64_t position) { position_ = position; }

 private:
  std::vector<MixtureSource> sources_;
  std::vector<double> probs_;
  std::vector<double> cumulative_;
  uint64_t seed_;
  uint64_t position_ = 0;
};

// Training sequences drawn from several token datasets by a MixtureSampler, each source read
// by its own GPTSampler. state_json()/restore_json() capture every position, for exact resume.
class MixtureDataset {
 public:
  struct Input {
    MixtureSource source;  // num_tokens is filled from the dataset when 0
    std::shared_ptr<const IndexedDataset> dataset;
    std::shared_ptr<const IndexedDataset> mask;  // its loss mask, or null (GPTSampler)
  };
  MixtureDataset(std::vector<Input> inputs, int64_t seq_len,
                 const MixtureTemperatures& temperatures, uint64_t seed,
                 Packing packing = Packing::kPacked);

  // Writes seq_len + 1 tokens (and, when given, their loss mask: 1s for a source without one);
  // returns the source index it came from.
  size_t next(int32_t* out, int32_t* mask_out = nullptr);
  const MixtureSampler& mixer() const { return mixer_; }
  // Source i's own sampler (its packing statistics).
  const GPTSampler& sampler(size_t i) const { return samplers_.at(i); }

  std::string state_json() const;
  void restore_json(const std::string& text);

 private:
  MixtureSampler mixer_;
  std::vector<GPTSampler> samplers_;
};

}  // namespace moex::data
