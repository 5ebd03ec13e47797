// Multilingual / multitask mixing: which source the next training sequence comes from.
//
// Languages are sampled by temperature (Kim et al. 2019, "Towards Multilingual NMT...";
// also Conneau et al. XLM-R with T = 1/alpha): p_l ∝ (n_l / N)^(1/T), with n_l the tokens of
// language l and N the total. T = 1 samples in proportion to the data, larger T flattens toward
// uniform over languages. Within a language, sources share p_l in proportion to their tokens.
// Draws are a pure function of (seed, draw index), so the state is one counter.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/indexed_dataset.h"

namespace moex::data {

struct MixtureSource {
  std::string name;      // "handbook.en", "bible.en-es"
  std::string language;  // the group that temperature applies over ("en", "es", "en-es", ...)
  int64_t num_tokens = 0;
};

// Probability of each source; errors name the source with no tokens or a bad temperature.
std::vector<double> temperature_probabilities(const std::vector<MixtureSource>& sources,
                                              double temperature);

class MixtureSampler {
 public:
  MixtureSampler(std::vector<MixtureSource> sources, double temperature, uint64_t seed);

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
  };
  MixtureDataset(std::vector<Input> inputs, int64_t seq_len, double temperature, uint64_t seed);

  // Writes seq_len + 1 tokens; returns the source index it came from.
  size_t next(int32_t* out);
  const MixtureSampler& mixer() const { return mixer_; }

  std::string state_json() const;
  void restore_json(const std::string& text);

 private:
  MixtureSampler mixer_;
  std::vector<GPTSampler> samplers_;
};

}  // namespace moex::data
