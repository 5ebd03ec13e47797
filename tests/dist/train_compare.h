// Comparing a distributed training run with the single-process reference (tests/dist/): the
// metrics lines and the final checkpoints' weights and Adam moments.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "model/model_io.h"

namespace moex::testing {

struct Metrics {
  std::vector<double> loss, aux, eval;
  int64_t dropped = 0;  // routes dropped in the logged micro-batches
};

inline Metrics read_metrics(const std::string& path) {
  Metrics m;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    const nlohmann::json js = nlohmann::json::parse(line);
    m.loss.push_back(js.at("loss").get<double>());
    m.aux.push_back(js.at("aux_loss").get<double>());
    if (js.contains("eval_loss")) m.eval.push_back(js.at("eval_loss").get<double>());
    for (const auto& [layer, stats] : js.at("expert_load").items())
      m.dropped += stats.at("dropped").get<int64_t>();
  }
  return m;
}

inline double rel_l2(const float* p, const float* q, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    num += (p[i] - q[i]) * static_cast<double>(p[i] - q[i]);
    den += static_cast<double>(q[i]) * q[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// `tolerance` is relative; 0 asks for the same values.
inline void expect_near_rel(const std::vector<double>& a, const std::vector<double>& b,
                            const char* what, double tolerance = 1e-5) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_NEAR(a[i], b[i], tolerance * std::fabs(b[i])) << what << " at entry " << i;
}

// The final weights and Adam moments of two runs' checkpoints agree within `tolerance` relative
// L2 (0: the same values); the moments within `moment_tolerance` where it is given.
inline void expect_same_checkpoint(const std::string& a_dir, const std::string& b_dir,
                                   double tolerance = 1e-5, double moment_tolerance = -1) {
  if (moment_tolerance < 0) moment_tolerance = tolerance;
  auto a_model = model::load_model(a_dir);
  auto b_model = model::load_model(b_dir);
  const Tensor& p = a_model->params().flat();
  const Tensor& q = b_model->params().flat();
  ASSERT_EQ(p.numel(), q.numel());
  EXPECT_LE(rel_l2(p.data<float>(), q.data<float>(), p.numel()), tolerance) << "final weights";
  const io::SafetensorsFile ma = io::SafetensorsFile::open(a_dir + "/optimizer.safetensors");
  const io::SafetensorsFile mb = io::SafetensorsFile::open(b_dir + "/optimizer.safetensors");
  ASSERT_EQ(ma.names(), mb.names());
  for (const std::string& t : mb.names()) {
    const Tensor x = ma.weight_f32(t), y = mb.weight_f32(t);
    ASSERT_EQ(x.shape(), y.shape()) << t;
    EXPECT_LE(rel_l2(x.data<float>(), y.data<float>(), x.numel()), moment_tolerance)
        << "Adam state " << t;
  }
}

}  // namespace moex::testing
