// Temperature-based mixing of sources over languages.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "data/mixture.h"

namespace moex::data {
namespace {

TEST(Mixture, ProbabilitiesFollowTheTemperatureFormula) {
  // Worked by hand: en has 900 tokens (two sources 600 + 300), es 100. N = 1000.
  const std::vector<MixtureSource> sources = {
      {"handbook.en", "en", 600}, {"bible.en", "en", 300}, {"bible.es", "es", 100}};
  // T = 1: proportional to data.
  auto p = temperature_probabilities(sources, 1.0);
  EXPECT_NEAR(p[0], 0.6, 1e-12);
  EXPECT_NEAR(p[1], 0.3, 1e-12);
  EXPECT_NEAR(p[2], 0.1, 1e-12);
  // T = 5: p_en ∝ 0.9^0.2, p_es ∝ 0.1^0.2; en's share is split 2:1 between its sources.
  p = temperature_probabilities(sources, 5.0);
  const double en = std::pow(0.9, 0.2), es = std::pow(0.1, 0.2);
  EXPECT_NEAR(p[0] + p[1], en / (en + es), 1e-12);
  EXPECT_NEAR(p[2], es / (en + es), 1e-12);
  EXPECT_NEAR(p[0], 2 * p[1], 1e-12);
  // Very high T: uniform over languages.
  p = temperature_probabilities(sources, 1e6);
  EXPECT_NEAR(p[2], 0.5, 1e-4);
  EXPECT_THROW(temperature_probabilities(sources, 0.0), Error);
  EXPECT_THROW(temperature_probabilities({{"x", "en", 0}}, 1.0), Error);
}

// Tasks first, then languages within each task (MixtureTemperatures::task > 0), against a
// naive computation written out term by term.
TEST(Mixture, TaskAndLanguageTemperaturesMatchANaiveComputation) {
  const std::vector<MixtureSource> sources = {{"handbook.en", "en", 1000, "lm"},
                                              {"bible.en", "en", 500, "lm"},
                                              {"bible.es", "es", 200, "lm"},
                                              {"bible.en-es", "en-es", 300, "translate"},
                                              {"bible.en.denoise", "en", 800, "denoise"},
                                              {"bible.es.denoise", "es", 100, "denoise"}};
  MixtureTemperatures t;
  t.task = 2.0;
  t.language = 3.0;
  t.language_by_task["denoise"] = 1.5;
  const std::vector<double> p = temperature_probabilities(sources, t);

  // Tasks: lm 1700, translate 300, denoise 900 tokens; p_t ∝ n_t^(1/2).
  const double lm = std::pow(1700.0, 0.5), tr = std::pow(300.0, 0.5), dn = std::pow(900.0, 0.5);
  const double z = lm + tr + dn;
  // lm languages at T = 3: en 1500, es 200; en split 1000:500 between its sources.
  const double lm_en = std::pow(1500.0, 1 / 3.0), lm_es = std::pow(200.0, 1 / 3.0);
  // denoise languages at its own T = 1.5: en 800, es 100.
  const double dn_en = std::pow(800.0, 1 / 1.5), dn_es = std::pow(100.0, 1 / 1.5);
  const std::vector<double> naive = {lm / z * lm_en / (lm_en + lm_es) * 1000.0 / 1500.0,
                                     lm / z * lm_en / (lm_en + lm_es) * 500.0 / 1500.0,
                                     lm / z * lm_es / (lm_en + lm_es),
                                     tr / z,
                                     dn / z * dn_en / (dn_en + dn_es),
                                     dn / z * dn_es / (dn_en + dn_es)};
  ASSERT_EQ(p.size(), naive.size());
  double sum = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    EXPECT_NEAR(p[i], naive[i], 1e-12) << sources[i].name;
    sum += p[i];
  }
  EXPECT_NEAR(sum, 1.0, 1e-12);

  // task = 0 is the one-level language mixture over all sources.
  MixtureTemperatures one_level;
  one_level.language = 3.0;
  const std::vector<double> a = temperature_probabilities(sources, one_level);
  const std::vector<double> b = temperature_probabilities(sources, 3.0);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]);

  // The sampler draws by these probabilities: within 5 standard deviations over 200000 draws.
  MixtureSampler sampler(sources, t, 7);
  const int n = 200000;
  std::vector<int> counts(sources.size(), 0);
  for (int i = 0; i < n; ++i) counts[sampler.next()]++;
  for (size_t i = 0; i < sources.size(); ++i) {
    const double sd = std::sqrt(n * naive[i] * (1 - naive[i]));
    EXPECT_NEAR(counts[i], n * naive[i], 5 * sd) << sources[i].name;
  }
  t.task = -1;
  EXPECT_THROW(temperature_probabilities(sources, t), Error);
}

TEST(Mixture, SampledFrequenciesMatchStatistically) {
  const std::vector<MixtureSource> sources = {
      {"a", "en", 5000}, {"b", "es", 1000}, {"c", "de", 200}, {"d", "en-es", 50}};
  MixtureSampler sampler(sources, MixtureTemperatures{3.0, 0, {}}, 99);
  const int n = 200000;
  std::vector<int> counts(sources.size(), 0);
  for (int i = 0; i < n; ++i) counts[sampler.next()]++;
  // Chi-square against the formula, 3 degrees of freedom: 0.999 quantile is 16.27.
  double chi2 = 0;
  for (size_t i = 0; i < sources.size(); ++i) {
    const double expect = n * sampler.probabilities()[i];
    chi2 += (counts[i] - expect) * (counts[i] - expect) / expect;
  }
  EXPECT_LT(chi2, 16.27);
}

TEST(Mixture, SameSeedRepeatsAndPositionResumes) {
  const std::vector<MixtureSource> sources = {{"a", "en", 10}, {"b", "es", 10}, {"c", "fr", 10}};
  MixtureSampler a(sources, MixtureTemperatures{1.0, 0, {}}, 5),
      b(sources, MixtureTemperatures{1.0, 0, {}}, 5),
      c(sources, MixtureTemperatures{1.0, 0, {}}, 6);
  std::vector<size_t> da, db, dc;
  for (int i = 0; i < 100; ++i) {
    da.push_back(a.next());
    db.push_back(b.next());
    dc.push_back(c.next());
  }
  EXPECT_EQ(da, db);
  EXPECT_NE(da, dc);
  MixtureSampler resumed(sources, MixtureTemperatures{1.0, 0, {}}, 5);
  resumed.set_position(40);
  for (int i = 40; i < 100; ++i) EXPECT_EQ(resumed.next(), da[i]);
}

TEST(MixtureDataset, ResumeIsExact) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("moex_mix_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::vector<MixtureDataset::Input> inputs;
  for (int s = 0; s < 3; ++s) {
    const std::string prefix = (dir / ("src" + std::to_string(s))).string();
    IndexedDatasetBuilder b(prefix, TokenDType::kU16);
    for (int d = 0; d < 10 + 5 * s; ++d) {
      std::vector<int32_t> ids;
      for (int k = 0; k < 7; ++k) ids.push_back(s * 10000 + d * 10 + k);
      b.add_document(ids);
    }
    b.finish();
    inputs.push_back({{"src" + std::to_string(s), s == 2 ? "en" : "l" + std::to_string(s), 0},
                      std::make_shared<const IndexedDataset>(IndexedDataset::open(prefix)),
                      nullptr});
  }
  const int64_t seq_len = 6;
  MixtureDataset straight(inputs, seq_len, MixtureTemperatures{2.0, 0, {}}, 11);
  std::vector<std::vector<int32_t>> expected;
  std::vector<int32_t> buf(seq_len + 1);
  std::string state;
  for (int i = 0; i < 200; ++i) {
    if (i == 77) state = straight.state_json();
    const size_t src = straight.next(buf.data());
    EXPECT_EQ(buf[0] / 10000, static_cast<int32_t>(src));  // the tokens come from that source
    expected.push_back(buf);
  }
  MixtureDataset resumed(inputs, seq_len, MixtureTemperatures{2.0, 0, {}}, 11);
  resumed.restore_json(state);
  for (int i = 77; i < 200; ++i) {
    resumed.next(buf.data());
    ASSERT_EQ(buf, expected[i]) << i;
  }
  EXPECT_THROW(resumed.restore_json("{\"mixture_position\": 1}"), Error);
}

}  // namespace
}  // namespace moex::data
