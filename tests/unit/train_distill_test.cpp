// Knowledge distillation (train/distill.h): the chunked KD term against a naive KL of both models'
// logits and a finite-difference directional derivative; staged KD switching off at its step
// (and plain training from there on); exact resume; init_from_teacher_layers copying the right
// tensors; config and teacher errors naming the file and field.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>

#include "gradcheck.h"
#include "model/model_io.h"
#include "train/distill.h"
#include "train_fixture.h"
#include "unit/cpu_kernel_checks.h"

namespace moex::train {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The fixture's training config with a "distill" section and training fields overridden.
std::string write_distill_config(const fs::path& corpus, const std::string& out_dir,
                                 const json& distill, const json& training = json::object()) {
  const fs::path base = testing::write_config(corpus, out_dir, "");
  json j = json::parse(std::ifstream(base));
  for (const auto& [k, v] : training.items()) j["training"][k] = v;
  j["distill"] = distill;
  const fs::path path =
      corpus /
      ("distill_" + std::to_string(std::hash<std::string>()(out_dir + j.dump())) + ".json");
  std::ofstream(path) << j.dump(2);
  return path.string();
}

// The fixture's model (vocab 40, d 32, every second block MoE) with `num_layers` blocks.
std::string model_json(int num_layers, int vocab = 40) {
  return json{{"vocab_size", vocab},
              {"hidden_size", 32},
              {"num_layers", num_layers},
              {"num_heads", 4},
              {"num_kv_heads", 2},
              {"max_seq_len", 32},
              {"ffn_size", 48},
              {"moe",
               {{"layer_freq", 2},
                {"num_experts", 4},
                {"top_k", 2},
                {"ffn_size", 24},
                {"capacity_factor", 1.0},
                {"aux_loss_coef", 0.01}}}}
      .dump(2);
}

ModelConfig config_of(const std::string& text) {
  return ModelConfig::from_json(JsonReader::from_string(text, "test model"));
}

// A randomly initialised teacher saved as a moex model directory.
std::string make_teacher(const fs::path& corpus, int num_layers, int vocab = 40) {
  const std::string text = model_json(num_layers, vocab);
  model::Model teacher(config_of(text));
  teacher.init_weights(77);
  const fs::path dir =
      corpus / ("teacher_" + std::to_string(num_layers) + "_" + std::to_string(vocab));
  fs::create_directories(dir);
  model::save_model(teacher, text, dir.string());
  return dir.string();
}

std::vector<json> metrics_of(const std::string& out_dir) {
  std::vector<json> out;
  std::ifstream in(out_dir + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) out.push_back(json::parse(line));
  return out;
}

std::vector<double> host_logits(model::Model& m, const std::vector<int32_t>& ids, int64_t batch,
                                int64_t seq_len) {
  std::vector<float> out(static_cast<size_t>(batch * seq_len * m.config().vocab_size));
  m.logits(ids.data(), batch, seq_len, out.data());
  return std::vector<double>(out.begin(), out.end());
}

std::vector<double> flat_of(const ParamBuffer& b) {
  const float* p = b.flat().data<float>();
  return std::vector<double>(p, p + b.flat().numel());
}

// A dense student and a differently shaped teacher over one vocabulary, and a batch.
struct ModelPair {
  static constexpr int64_t kBatch = 2, kSeq = 8, kVocab = 40;
  model::Model student{config_of(R"({"vocab_size": 40, "hidden_size": 16, "num_layers": 2,
      "num_heads": 2, "max_seq_len": 16, "ffn_size": 24})")};
  model::Model teacher{config_of(R"({"vocab_size": 40, "hidden_size": 24, "num_layers": 3,
      "num_heads": 3, "max_seq_len": 16, "ffn_size": 40, "init_std": 0.3})")};
  std::vector<int32_t> ids, targets;
  ModelPair() {
    student.init_weights(3);
    teacher.init_weights(4);
    for (int64_t i = 0; i < kBatch * kSeq; ++i) {
      ids.push_back(static_cast<int32_t>(philox_u32(9, 0, i) % kVocab));
      targets.push_back(i % 5 == 2 ? -100 : static_cast<int32_t>(philox_u32(9, 1, i) % kVocab));
    }
  }
  model::SoftTargets soft(double tau, double alpha) {
    return {teacher.final_hidden(ids.data(), kBatch, kSeq), teacher.lm_head_weight(), tau, alpha};
  }
};

TEST(DistillLoss, ModelKdTermMatchesNaiveKlOfBothModelsLogits) {
  ModelPair m;
  const double tau = 2.0, alpha = 0.7;
  const auto ls = host_logits(m.student, m.ids, ModelPair::kBatch, ModelPair::kSeq);
  const auto lt = host_logits(m.teacher, m.ids, ModelPair::kBatch, ModelPair::kSeq);
  double expect = 0;
  int count = 0;
  for (size_t r = 0; r < m.targets.size(); ++r) {
    if (m.targets[r] == -100) continue;
    const double* s = &ls[r * ModelPair::kVocab];
    const double* t = &lt[r * ModelPair::kVocab];
    double zs = 0, zt = 0, kl = 0;
    for (int64_t c = 0; c < ModelPair::kVocab; ++c)
      zs += std::exp(s[c] / tau), zt += std::exp(t[c] / tau);
    for (int64_t c = 0; c < ModelPair::kVocab; ++c) {
      const double pt = std::exp(t[c] / tau) / zt, ps = std::exp(s[c] / tau) / zs;
      kl += pt * std::log(pt / ps);
    }
    expect += tau * tau * kl;
    ++count;
  }
  expect /= count;
  const model::SoftTargets soft = m.soft(tau, alpha);
  model::ForwardOptions opt;
  opt.soft_targets = &soft;
  const model::LossResult r =
      m.student.forward(m.ids.data(), m.targets.data(), ModelPair::kBatch, ModelPair::kSeq, opt);
  EXPECT_GT(expect, 1e-3) << "the two models should disagree";
  EXPECT_NEAR(r.kd_loss, expect, 1e-5 * expect);
  EXPECT_NEAR(r.weighted_kd, alpha * r.kd_loss, 1e-12);
  EXPECT_EQ(r.num_targets, count);
}

// d(CE + alpha * KD)/d(params) from forward + backward against a central difference of the
// objective along a random direction (the student is dense: no routing switches under the step).
TEST(DistillLoss, ModelGradientMatchesDirectionalFiniteDifference) {
  ModelPair m;
  const model::SoftTargets soft = m.soft(1.5, 0.8);
  auto objective = [&] {
    model::ForwardOptions opt;
    opt.soft_targets = &soft;
    const model::LossResult r =
        m.student.forward(m.ids.data(), m.targets.data(), ModelPair::kBatch, ModelPair::kSeq, opt);
    return r.loss + r.weighted_kd;
  };
  model::ForwardOptions train_opt;
  train_opt.for_backward = true;
  train_opt.soft_targets = &soft;
  m.student.zero_grad();
  m.student.forward(m.ids.data(), m.targets.data(), ModelPair::kBatch, ModelPair::kSeq, train_opt);
  m.student.backward();
  const auto grad = flat_of(m.student.grads());
  const auto theta = flat_of(m.student.params());
  const auto dir = testing::random_vector<double>(theta.size(), 11);
  double analytic = 0;
  for (size_t i = 0; i < theta.size(); ++i) analytic += grad[i] * dir[i];
  const double h = 1e-3;
  auto at = [&](double step) {
    float* p = m.student.params().flat().data<float>();
    for (size_t i = 0; i < theta.size(); ++i) p[i] = static_cast<float>(theta[i] + step * dir[i]);
    m.student.weights_changed();
    return objective();
  };
  const double numeric = (at(h) - at(-h)) / (2 * h);
  EXPECT_NEAR(analytic, numeric, 5e-3 * std::fabs(numeric) + 1e-4);
  // The KD term changes the gradient: without it the directional derivative differs.
  EXPECT_GT(std::fabs(analytic), 1e-3);
}

// A teacher identical to the student: the KD term is 0 and so is its gradient.
TEST(DistillLoss, TeacherEqualToStudentAddsNothing) {
  ModelPair m;
  model::Model twin(m.student.config());
  twin.copy_weights_from(m.student);
  const model::SoftTargets soft = {
      twin.final_hidden(m.ids.data(), ModelPair::kBatch, ModelPair::kSeq), twin.lm_head_weight(),
      2.0, 1.0};
  auto grads = [&](const model::SoftTargets* s, double* kd) {
    model::ForwardOptions opt;
    opt.for_backward = true;
    opt.soft_targets = s;
    m.student.zero_grad();
    *kd = m.student.forward(m.ids.data(), m.targets.data(), ModelPair::kBatch, ModelPair::kSeq, opt)
              .kd_loss;
    m.student.backward();
    return flat_of(m.student.grads());
  };
  double kd_plain = -1, kd_twin = -1;
  const auto plain = grads(nullptr, &kd_plain);
  const auto with_twin = grads(&soft, &kd_twin);
  EXPECT_EQ(kd_plain, 0.0);
  EXPECT_NEAR(kd_twin, 0.0, 1e-6);
  EXPECT_LT(testing::relative_l2(with_twin, plain), 1e-5);
}

TEST(Distill, StagedKdSwitchesOffAtItsStepThenEqualsPlainTraining) {
  const fs::path corpus = testing::make_temp_corpus("moex_distill_staged");
  const std::string teacher = make_teacher(corpus, 4);
  const std::string out = (corpus / "kd").string(), plain_out = (corpus / "plain").string();
  const double alpha = 0.5;
  const DistillRunConfig config = DistillRunConfig::from_file(write_distill_config(
      corpus, out, {{"alpha", alpha}, {"temperature", 2.0}, {"stop_kd_at_step", 4}},
      {{"steps", 8}, {"checkpoint_every", 4}, {"eval_every", 2}}));
  const TrainResult r = run_distillation(config, teacher, "");
  EXPECT_EQ(r.steps_done, 8);
  const auto kd = metrics_of(out);
  ASSERT_EQ(kd.size(), 8u);
  for (size_t i = 0; i < kd.size(); ++i) {
    const double lm = kd[i].at("lm_loss"), kd_loss = kd[i].at("kd_loss");
    if (i < 4) {  // optimizer steps 0..3 distill
      EXPECT_GT(kd_loss, 1e-4) << "step " << i + 1;
      EXPECT_EQ(kd[i].at("kd_alpha").get<double>(), alpha);
      EXPECT_NEAR(kd[i].at("loss").get<double>(), lm + alpha * kd_loss, 1e-12);
    } else {
      EXPECT_EQ(kd_loss, 0.0) << "step " << i + 1;
      EXPECT_EQ(kd[i].at("kd_alpha").get<double>(), 0.0);
      EXPECT_EQ(kd[i].at("loss").get<double>(), lm);
    }
  }
  // Plain LM training from the checkpoint at the stop gives the same steps, bit for bit.
  TrainConfig plain = config.train;
  plain.training.out_dir = plain_out;
  run_training(plain, out + "/step-000004");
  const auto lm = metrics_of(plain_out);
  ASSERT_EQ(lm.size(), 4u);
  for (size_t i = 0; i < lm.size(); ++i) {
    EXPECT_EQ(lm[i].at("step"), kd[i + 4].at("step"));
    EXPECT_EQ(lm[i].at("loss").get<double>(), kd[i + 4].at("loss").get<double>())
        << "step " << i + 5;
    EXPECT_EQ(lm[i].at("grad_norm").get<double>(), kd[i + 4].at("grad_norm").get<double>());
    EXPECT_EQ(lm[i].contains("eval_loss"), kd[i + 4].contains("eval_loss"));
    if (lm[i].contains("eval_loss")) {
      EXPECT_EQ(lm[i].at("eval_loss").get<double>(), kd[i + 4].at("eval_loss").get<double>());
    }
  }
  fs::remove_all(corpus);
}

TEST(Distill, InterruptedAndResumedRunEqualsStraightRun) {
  const fs::path corpus = testing::make_temp_corpus("moex_distill_resume");
  const std::string teacher = make_teacher(corpus, 4);
  const json distill = {{"alpha", 1.0},
                        {"temperature", 1.5},
                        {"stop_kd_at_step", 5},
                        {"init_from_teacher_layers", {0, 3}}};
  const std::string straight = (corpus / "straight").string(), split = (corpus / "split").string();
  run_distillation(
      DistillRunConfig::from_file(write_distill_config(corpus, straight, distill, {{"steps", 8}})),
      teacher, "");
  const DistillRunConfig split_config =
      DistillRunConfig::from_file(write_distill_config(corpus, split, distill, {{"steps", 8}}));
  EXPECT_EQ(run_distillation(split_config, teacher, "", 3).steps_done, 3);
  EXPECT_EQ(run_distillation(split_config, teacher, split + "/latest").steps_done, 8);
  const auto a = metrics_of(straight), b = metrics_of(split);
  ASSERT_EQ(a.size(), 8u);
  ASSERT_EQ(b.size(), 8u);
  for (size_t i = 0; i < a.size(); ++i)
    for (const char* field : {"loss", "lm_loss", "kd_loss", "kd_alpha", "grad_norm"})
      EXPECT_EQ(a[i].at(field).get<double>(), b[i].at(field).get<double>())
          << field << " at step " << i + 1;
  EXPECT_GT(a[4].at("kd_loss").get<double>(), 0.0);
  EXPECT_EQ(a[5].at("kd_loss").get<double>(), 0.0);
  fs::remove_all(corpus);
}

TEST(Distill, InitFromTeacherLayersCopiesTheListedLayers) {
  const fs::path corpus = testing::make_temp_corpus("moex_distill_init");
  const std::string teacher_dir = make_teacher(corpus, 4);
  auto teacher = model::load_model(teacher_dir);
  model::Model student(config_of(model_json(2)));
  student.init_weights(1);
  DistillConfig c;
  c.init_from_teacher_layers = {2, 3};  // block 0 dense <- teacher 2 dense; 1 MoE <- 3 MoE
  c.layers_field = "cfg.json: distill.init_from_teacher_layers";
  init_from_teacher_layers(student, *teacher, c);
  const ParamBuffer& s = student.params();
  const ParamBuffer& t = teacher->params();
  auto same = [&](const std::string& student_name, const std::string& teacher_name) {
    const Tensor& a = s.tensor(s.index_of(student_name));
    const Tensor& b = t.tensor(t.index_of(teacher_name));
    return a.shape() == b.shape() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
  };
  const std::map<std::string, std::string> layer_of = {{"model.layers.0.", "model.layers.2."},
                                                       {"model.layers.1.", "model.layers.3."}};
  int copied = 0;
  for (int i = 0; i < s.size(); ++i) {
    std::string name = s.name(i), from = name;
    for (const auto& [prefix, teacher_prefix] : layer_of)
      if (name.rfind(prefix, 0) == 0) from = teacher_prefix + name.substr(prefix.size());
    EXPECT_TRUE(same(name, from)) << name << " should be the teacher's " << from;
    ++copied;
  }
  EXPECT_EQ(copied, s.size());
  // Spot checks written out: the MoE router and the embedding.
  EXPECT_TRUE(same("model.layers.1.mlp.gate.weight", "model.layers.3.mlp.gate.weight"));
  EXPECT_FALSE(same("model.layers.1.mlp.gate.weight", "model.layers.1.mlp.gate.weight"));
  EXPECT_TRUE(same("model.embed_tokens.weight", "model.embed_tokens.weight"));
  EXPECT_TRUE(same("model.norm.weight", "model.norm.weight"));

  // A dense block cannot start from an MoE layer, and indices must exist.
  c.init_from_teacher_layers = {3, 1};
  testing::expect_error_naming([&] { init_from_teacher_layers(student, *teacher, c); },
                               {"distill.init_from_teacher_layers", "model.layers.3."});
  c.init_from_teacher_layers = {0, 5};
  testing::expect_error_naming([&] { init_from_teacher_layers(student, *teacher, c); },
                               {"distill.init_from_teacher_layers", "5"});
  fs::remove_all(corpus);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Distill, ConfigErrorsNameFileAndField) {
  const fs::path corpus = testing::make_temp_corpus("moex_distill_cfg");
  auto config_error = [&](const json& distill) {
    const std::string path = write_distill_config(corpus, "x", distill);
    const std::string e = error_of([&] { DistillRunConfig::from_file(path); });
    EXPECT_NE(e.find(path), std::string::npos) << e;
    return e;
  };
  EXPECT_NE(config_error(json::object({{"alfa", 1}})).find("unknown field 'distill.alfa'"),
            std::string::npos);
  EXPECT_NE(config_error(json::object({{"temperature", 0}})).find("distill.temperature must be"),
            std::string::npos);
  EXPECT_NE(config_error(json::object({{"alpha", -1}})).find("distill.alpha must be"),
            std::string::npos);
  EXPECT_NE(config_error(json::object({{"alpha", "high"}})).find("distill.alpha must be a number"),
            std::string::npos);
  EXPECT_NE(config_error(json::object({{"stop_kd_at_step", -3}}))
                .find("distill.stop_kd_at_step must be >= 0"),
            std::string::npos);
  EXPECT_NE(config_error(json::object({{"init_from_teacher_layers", {1, 2, 3}}}))
                .find("distill.init_from_teacher_layers has 3 entries"),
            std::string::npos);
  {  // tensor parallelism is a layout like any other (tests/dist: it equals the single process)
    const std::string path = write_distill_config(corpus, "tp", json::object());
    json j = json::parse(std::ifstream(path));
    j["parallel"] = {{"tp", 2}};
    std::ofstream(path) << j.dump(2);
    EXPECT_EQ(DistillRunConfig::from_file(path).train.parallel.tp, 2);
  }
  const DistillRunConfig ok =
      DistillRunConfig::from_file(write_distill_config(corpus, "x", json::object()));
  EXPECT_EQ(ok.distill.alpha, 1.0);
  EXPECT_EQ(ok.distill.stop_kd_at_step, -1);
  EXPECT_TRUE(ok.distill.kd_active(1000000));
  fs::remove_all(corpus);
}

TEST(Distill, BadTeacherIsOneClearErrorAndNothingIsWritten) {
  const fs::path corpus = testing::make_temp_corpus("moex_distill_teacher");
  const std::string out = (corpus / "run").string();
  const DistillRunConfig config = DistillRunConfig::from_file(
      write_distill_config(corpus, out, json::object({{"init_from_teacher_layers", {0, 7}}})));
  auto teacher_error = [&](const std::string& dir) {
    return error_of([&] { run_distillation(config, dir, ""); });
  };
  EXPECT_NE(teacher_error((corpus / "nowhere").string()).find("no such directory"),
            std::string::npos);
  fs::create_directories(corpus / "empty");
  EXPECT_NE(teacher_error((corpus / "empty").string()).find("config.json is missing"),
            std::string::npos);
  const std::string good = make_teacher(corpus, 4);
  fs::create_directories(corpus / "no_weights");
  fs::copy_file(good + "/config.json", corpus / "no_weights" / "config.json");
  EXPECT_NE(teacher_error((corpus / "no_weights").string()).find("no weights"), std::string::npos);
  const std::string other_vocab = teacher_error(make_teacher(corpus, 4, 48));
  EXPECT_NE(other_vocab.find("vocab_size 48 differs"), std::string::npos) << other_vocab;
  EXPECT_NE(other_vocab.find("model.vocab_size = 40"), std::string::npos) << other_vocab;
  const std::string bad_layer = teacher_error(good);
  EXPECT_NE(bad_layer.find("distill.init_from_teacher_layers: layer 7"), std::string::npos)
      << bad_layer;
  EXPECT_FALSE(fs::exists(out)) << "a refused run must leave nothing behind";
  fs::remove_all(corpus);
}

}  // namespace
}  // namespace moex::train
