// Hugging Face interop: parity with transformers 5.17 on the fixtures of
// tests/reference/make_hf_fixtures.py (logits, loss, per-layer aux loss, greedy continuations,
// Mixtral gradients), export -> re-import, and clear errors on bad inputs.
// (infer_ prefix: links moex_infer, which brings moex_model, for infer::generate.)
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "infer/generator.h"
#include "io/safetensors.h"
#include "model/hf_config.h"
#include "model/hf_weights.h"
#include "model/model_io.h"

namespace fs = std::filesystem;
using namespace moex;

namespace {

fs::path fixture_dir(const std::string& arch) {
  return fs::path(__FILE__).parent_path().parent_path() / "fixtures" / "hf" / arch;
}

double rel_l2(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

std::vector<int32_t> ints(const Tensor& t) {
  const int32_t* p = t.data<int32_t>();
  return {p, p + t.numel()};
}

fs::path temp_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("moex_hf_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// Targets aligned with ids: targets[t] = ids[t + 1], the last position ignored (HF's shift).
std::vector<int32_t> shifted(const std::vector<int32_t>& ids, int64_t batch, int64_t seq) {
  std::vector<int32_t> t(ids.size(), -100);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i + 1 < seq; ++i) t[b * seq + i] = ids[b * seq + i + 1];
  return t;
}

class HfParity : public ::testing::TestWithParam<std::string> {};

TEST_P(HfParity, LogitsLossAuxGreedyMatchTransformers) {
  const fs::path dir = fixture_dir(GetParam());
  const io::SafetensorsFile fx = io::SafetensorsFile::open((dir / "fixture.safetensors").string());
  auto model = model::load_model((dir / "model").string());
  const Tensor ids_t = fx.copy("input_ids");
  const int64_t batch = ids_t.dim(0), seq = ids_t.dim(1), vocab = model->config().vocab_size;
  const std::vector<int32_t> ids = ints(ids_t);

  const Tensor want_logits = fx.to_f32("logits");
  std::vector<float> logits(batch * seq * vocab);
  model->logits(ids.data(), batch, seq, logits.data());
  const double err = rel_l2(logits.data(), want_logits.data<float>(), want_logits.numel());
  std::printf("[%s] logits rel L2 %.3g\n", GetParam().c_str(), err);
  EXPECT_LT(err, 1e-4);

  const std::vector<int32_t> targets = shifted(ids, batch, seq);
  const model::LossResult r = model->forward(ids.data(), targets.data(), batch, seq, {});
  const double want_loss = fx.to_f32("loss").data<float>()[0];
  std::printf("[%s] loss %.7f vs %.7f (diff %.2g)\n", GetParam().c_str(), r.loss, want_loss,
              r.loss - want_loss);
  EXPECT_NEAR(r.loss, want_loss, 1e-5);

  // HF's load_balancing_loss_func applied to each MoE layer alone = moex's kMixtral aux loss.
  const Tensor layer_aux = fx.to_f32("layer_aux");
  const auto stats = model->moe_stats();
  ASSERT_EQ(static_cast<int64_t>(stats.size()), layer_aux.numel());
  for (size_t i = 0; i < stats.size(); ++i)
    EXPECT_NEAR(stats[i].second.aux_loss, layer_aux.data<float>()[i], 1e-5) << "MoE layer " << i;

  const std::vector<int32_t> greedy = ints(fx.copy("greedy"));
  const int64_t total = fx.entry("greedy").shape[1], new_tokens = total - seq;
  for (int64_t b = 0; b < batch; ++b) {
    const std::vector<int32_t> prompt(ids.begin() + b * seq, ids.begin() + (b + 1) * seq);
    infer::GenerateOptions opt;
    opt.max_new_tokens = new_tokens;
    const std::vector<int32_t> got = infer::generate(*model, prompt, opt);
    const std::vector<int32_t> want(greedy.begin() + b * total + seq,
                                    greedy.begin() + (b + 1) * total);
    EXPECT_EQ(got, want) << "greedy continuation of row " << b;
  }
}

TEST_P(HfParity, ExportReimportRoundTrip) {
  const fs::path dir = fixture_dir(GetParam());
  auto model = model::load_model((dir / "model").string());
  const fs::path out = temp_dir("export_" + GetParam());
  const std::string arch = model->config().architecture;
  // a small shard limit, so the export is sharded with an index
  model::save_hf_model(*model, out.string(), arch, 64 * 1024);
  // MOEX_HF_EXPORT_DIR keeps a copy (the reference script checks transformers loads it).
  if (const char* keep = std::getenv("MOEX_HF_EXPORT_DIR"))
    fs::copy(out, fs::path(keep) / GetParam(), fs::copy_options::recursive);
  EXPECT_TRUE(fs::exists(out / io::kSafetensorsIndexName));
  auto again = model::load_model(out.string());
  EXPECT_EQ(again->config().architecture, arch);
  ASSERT_EQ(again->params().size(), model->params().size());
  for (int i = 0; i < model->params().size(); ++i) {
    const Tensor& a = model->params().tensor(i);
    const Tensor& b = again->params().tensor(i);
    ASSERT_EQ(a.shape(), b.shape()) << model->params().name(i);
    EXPECT_TRUE(std::equal(a.data<float>(), a.data<float>() + a.numel(), b.data<float>()))
        << model->params().name(i);
  }
  // The exported config reads back to the same layer layout.
  for (int64_t l = 0; l < model->config().num_layers; ++l) {
    const LayerSpec& x = model->config().layers[l];
    const LayerSpec& y = again->config().layers[l];
    EXPECT_EQ(x.moe, y.moe);
    EXPECT_EQ(x.moe_config.num_experts, y.moe_config.num_experts);
    EXPECT_EQ(x.moe_config.renormalize, y.moe_config.renormalize);
    EXPECT_EQ(x.moe_config.shared_ffn_size, y.moe_config.shared_ffn_size);
  }
  fs::remove_all(out);
}

INSTANTIATE_TEST_SUITE_P(Archs, HfParity,
                         ::testing::Values("mixtral", "qwen2_moe", "qwen3_moe", "olmoe"));

TEST(HfParity, MixtralGradientsMatchTorch) {
  const fs::path dir = fixture_dir("mixtral");
  ModelConfig config = model::hf_config_from_file((dir / "model" / "config.json").string());
  for (LayerSpec& l : config.layers) l.moe_config.aux_loss_coef = 0.0f;  // LM loss only, as torch
  model::Model model(config);
  model::load_hf_weights(model, (dir / "model").string());
  const io::SafetensorsFile fx = io::SafetensorsFile::open((dir / "fixture.safetensors").string());
  const Tensor ids_t = fx.copy("input_ids");
  const int64_t batch = ids_t.dim(0), seq = ids_t.dim(1);
  const std::vector<int32_t> ids = ints(ids_t), targets = shifted(ids, batch, seq);
  model::ForwardOptions opt;
  opt.training = true;
  opt.for_backward = true;
  model.zero_grad();
  const model::LossResult r = model.forward(ids.data(), targets.data(), batch, seq, opt);
  EXPECT_NEAR(r.loss, fx.to_f32("train_loss").data<float>()[0], 1e-5);
  model.backward();
  const io::SafetensorsFile grads = io::SafetensorsFile::open((dir / "grads.safetensors").string());
  int checked = 0;
  double worst = 0;
  for (const std::string& name : grads.names()) {
    const int idx = model.grads().index_of(name);
    ASSERT_GE(idx, 0) << name;
    const Tensor want = grads.to_f32(name);
    const Tensor& got = model.grads().tensor(idx);
    ASSERT_EQ(got.shape(), want.shape()) << name;
    const double err = rel_l2(got.data<float>(), want.data<float>(), want.numel());
    worst = std::max(worst, err);
    EXPECT_LT(err, 1e-4) << name;
    ++checked;
  }
  std::printf("[mixtral] %d gradient tensors, worst rel L2 %.3g\n", checked, worst);
  EXPECT_EQ(checked, model.params().size());
}

// ---- bad inputs ----

fs::path copy_fixture_model(const std::string& arch, const std::string& name) {
  const fs::path out = temp_dir(name);
  fs::copy(fixture_dir(arch) / "model", out, fs::copy_options::recursive);
  return out;
}

void edit_config(const fs::path& dir, const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json j;
  std::ifstream(dir / "config.json") >> j;
  edit(j);
  std::ofstream(dir / "config.json") << j.dump(2);
}

TEST(HfErrors, UnsupportedArchitectureNamesFileAndField) {
  const fs::path dir = copy_fixture_model("olmoe", "bad_arch");
  edit_config(dir, [](nlohmann::json& j) { j["architectures"] = {"LlamaForCausalLM"}; });
  const std::string e = error_of([&] { model::load_model(dir.string()); });
  EXPECT_NE(e.find("config.json"), std::string::npos) << e;
  EXPECT_NE(e.find("architectures"), std::string::npos) << e;
  EXPECT_NE(e.find("LlamaForCausalLM"), std::string::npos) << e;
  fs::remove_all(dir);
}

TEST(HfErrors, UnsupportedOptionsNameTheField) {
  const std::vector<std::pair<std::string, std::function<void(nlohmann::json&)>>> cases = {
      {"clip_qkv", [](nlohmann::json& j) { j["clip_qkv"] = 8.0; }},
      {"rope_scaling",
       [](nlohmann::json& j) {
         j["rope_scaling"] = {{"type", "linear"}};
       }},
      {"rope_type", [](nlohmann::json& j) { j["rope_parameters"]["rope_type"] = "yarn"; }},
      {"hidden_act", [](nlohmann::json& j) { j["hidden_act"] = "gelu"; }},
      {"mystery_option", [](nlohmann::json& j) { j["mystery_option"] = 1; }},
  };
  for (const auto& [field, edit] : cases) {
    const fs::path dir = copy_fixture_model("olmoe", "bad_opt");
    edit_config(dir, edit);
    const std::string e = error_of([&] { model::load_model(dir.string()); });
    EXPECT_NE(e.find("config.json"), std::string::npos) << e;
    EXPECT_NE(e.find(field), std::string::npos) << e;
    fs::remove_all(dir);
  }
  const fs::path dir = copy_fixture_model("qwen2_moe", "bad_sw");
  edit_config(dir, [](nlohmann::json& j) { j["use_sliding_window"] = true; });
  const std::string e = error_of([&] { model::load_model(dir.string()); });
  EXPECT_NE(e.find("use_sliding_window"), std::string::npos) << e;
  fs::remove_all(dir);
}

TEST(HfErrors, CorruptSafetensorsNamesTheFile) {
  const fs::path dir = copy_fixture_model("olmoe", "corrupt");
  const fs::path st = dir / "model.safetensors";
  fs::resize_file(st, fs::file_size(st) / 2);  // offsets now point past the end
  const std::string e = error_of([&] { model::load_model(dir.string()); });
  EXPECT_NE(e.find("model.safetensors"), std::string::npos) << e;
  fs::remove_all(dir);
}

TEST(HfErrors, MissingUnexpectedAndMisshapenTensors) {
  auto model = model::load_model((fixture_dir("qwen3_moe") / "model").string());
  const fs::path dir = temp_dir("tensors");
  model::save_hf_model(*model, dir.string(), "Qwen3MoeForCausalLM");
  const io::SafetensorsFile file = io::SafetensorsFile::open((dir / "model.safetensors").string());
  std::map<std::string, Tensor> all;
  for (const std::string& n : file.names()) all[n] = file.copy(n);

  auto expect_error = [&](std::map<std::string, Tensor> tensors, const std::string& tensor) {
    io::save_safetensors((dir / "model.safetensors").string(), tensors);
    const std::string e = error_of([&] { model::load_model(dir.string()); });
    EXPECT_NE(e.find("model.safetensors"), std::string::npos) << e;
    EXPECT_NE(e.find(tensor), std::string::npos) << e;
  };
  const std::string expert = "model.layers.1.mlp.experts.3.up_proj.weight";
  auto missing = all;
  missing.erase(expert);
  expect_error(missing, expert);
  auto extra = all;
  extra["model.layers.0.mlp.bogus.weight"] = all.at("model.norm.weight");
  expect_error(extra, "model.layers.0.mlp.bogus.weight");
  auto misshapen = all;
  misshapen[expert] = all.at("model.layers.1.mlp.experts.3.down_proj.weight");
  expect_error(misshapen, expert);
  fs::remove_all(dir);
}

}  // namespace

namespace {

// transformers 5.x's in-memory layout (fused mlp.experts.gate_up_proj [E, 2F, d] and
// down_proj [E, d, F], router mlp.gate.weight) loads too, and also with the expert matrices
// stored transposed ([E, d, 2F], [E, F, d]).
TEST(HfWeights, FusedExpertTensorsLoad) {
  auto model = model::load_model((fixture_dir("mixtral") / "model").string());
  for (bool transposed : {false, true}) {
    const fs::path dir = temp_dir(transposed ? "fused_t" : "fused");
    std::ofstream(dir / "config.json")
        << model::hf_config_to_json(model->config(), "MixtralForCausalLM").dump(2);
    std::map<std::string, Tensor> tensors;
    std::vector<std::vector<float>> keep;
    for (int i = 0; i < model->params().size(); ++i) {
      const std::string& name = model->params().name(i);
      Tensor t = model->params().tensor(i);
      if (transposed && name.find(".experts.") != std::string::npos) {
        const int64_t e = t.dim(0), r = t.dim(1), c = t.dim(2);
        keep.emplace_back(t.numel());
        for (int64_t x = 0; x < e; ++x)
          for (int64_t y = 0; y < r; ++y)
            for (int64_t z = 0; z < c; ++z)
              keep.back()[(x * c + z) * r + y] = t.data<float>()[(x * r + y) * c + z];
        t = Tensor::from_external(keep.back().data(), Shape{e, c, r}, DType::kF32);
      }
      tensors[name] = t;
    }
    io::save_safetensors((dir / "model.safetensors").string(), tensors);
    auto again = model::load_model(dir.string());
    for (int i = 0; i < model->params().size(); ++i) {
      const Tensor& a = model->params().tensor(i);
      EXPECT_TRUE(std::equal(a.data<float>(), a.data<float>() + a.numel(),
                             again->params().tensor(i).data<float>()))
          << model->params().name(i) << (transposed ? " (transposed)" : "");
    }
    fs::remove_all(dir);
  }
}

}  // namespace
