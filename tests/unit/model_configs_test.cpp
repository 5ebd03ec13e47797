// Every config shipped in configs/ parses (unknown fields would be errors) and builds a model.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <type_traits>

#include "model/hf_config.h"
#include "model/model.h"

namespace moex::model {
namespace {

TEST(ShippedConfigs, ParseAndDescribeTheIntendedModels) {
  const std::string dir = std::string(MOEX_SOURCE_DIR) + "/configs/";
  auto model_of = [&](const std::string& name) {
    std::ifstream in(dir + name);
    std::stringstream text;
    text << in.rdbuf();
    const JsonReader root = JsonReader::from_string(text.str(), name);
    return ModelConfig::from_json(root.child("model"));
  };
  const ModelConfig tiny = model_of("tiny-moe.json");
  EXPECT_EQ(tiny.num_moe_layers(), 2);
  const ModelConfig ds = model_of("ds-moe-gpt.json");
  EXPECT_EQ(ds.layers[1].moe_config.top_k, 1);
  EXPECT_EQ(ds.positions, PositionType::kLearned);
  EXPECT_FALSE(ds.layers[0].moe);
  const ModelConfig pr = model_of("pr-moe.json");
  EXPECT_EQ(pr.layers[1].moe_config.num_experts, 8);
  EXPECT_EQ(pr.layers[7].moe_config.num_experts, 32);
  EXPECT_TRUE(pr.layers[7].moe_config.residual);
  const ModelConfig mx = model_of("mixtral-style.json");
  EXPECT_EQ(mx.num_moe_layers(), 8);
  EXPECT_EQ(mx.num_kv_heads, 2);
  EXPECT_TRUE(mx.layers[0].moe_config.dropless);
  Model tiny_model(tiny);  // allocates and binds every parameter
  EXPECT_EQ(tiny_model.params().num_elements(), tiny.num_parameters());
}

// Layers keep references into the model's config: a copied or moved Model would dangle.
static_assert(!std::is_copy_constructible_v<Model> && !std::is_move_constructible_v<Model> &&
                  !std::is_copy_assignable_v<Model> && !std::is_move_assignable_v<Model>,
              "Model must stay where it was built");

// num_parameters() counts from the config alone; it must equal what Model declares, for every
// option that adds weights.
TEST(NumParameters, EqualsTheDeclaredWeightsForEveryOption) {
  const nlohmann::json base = nlohmann::json::parse(R"({
    "vocab_size": 50, "hidden_size": 16, "num_layers": 3, "num_heads": 4, "num_kv_heads": 2,
    "max_seq_len": 8, "ffn_size": 24,
    "moe": {"layer_freq": 2, "num_experts": 4, "top_k": 2, "ffn_size": 12}})");
  const std::vector<std::pair<std::string, nlohmann::json>> variants = {
      {"base", nlohmann::json::object()},
      {"layernorm (biases)", {{"norm", "layernorm"}}},
      {"qkv bias", {{"qkv_bias", true}}},
      {"per-head q/k norm", {{"qk_norm", "per_head"}}},
      {"full q/k norm", {{"qk_norm", "full"}}},
      {"gelu, learned positions, tied",
       {{"activation", "gelu"}, {"positions", "learned"}, {"tie_embeddings", true}}},
      {"selection bias", {{"moe", {{"score_func", "sigmoid"}, {"selection_bias", true}}}}},
      {"residual", {{"moe", {{"residual", true}, {"residual_ffn_size", 20}}}}},
      {"gated shared expert", {{"moe", {{"shared_ffn_size", 8}, {"shared_gate", true}}}}},
      {"pyramid", {{"num_layers", 4}, {"moe", {{"num_experts", {2, 6}}}}}},
  };
  for (const auto& [name, patch] : variants) {
    nlohmann::json j = base;
    j.merge_patch(patch);
    const ModelConfig config = ModelConfig::from_json(JsonReader::from_string(j.dump(), name));
    Model model(config);
    EXPECT_EQ(config.num_parameters(), model.params().num_elements()) << name;
  }
}

// The Hugging Face fixtures list transformers' own parameter shapes (meta.json): an independent
// count.
TEST(NumParameters, EqualsTransformersCountForTheHfFixtures) {
  for (const char* arch : {"mixtral", "olmoe", "qwen2_moe", "qwen3_moe"}) {
    const std::string dir = std::string(MOEX_SOURCE_DIR) + "/tests/fixtures/hf/" + arch;
    std::ifstream in(dir + "/meta.json");
    const nlohmann::json meta = nlohmann::json::parse(in);
    int64_t expected = 0;
    for (const auto& [name, shape] : meta.at("params").items()) {
      int64_t n = 1;
      for (int64_t s : shape) n *= s;
      expected += n;
    }
    const ModelConfig config = hf_config_from_file(dir + "/model/config.json");
    EXPECT_EQ(config.num_parameters(), expected) << arch;
    EXPECT_EQ(Model(config).params().num_elements(), expected) << arch;
  }
}

// A Hugging Face config.json that moex's model checks refuse names config.json's own fields (not
// moex's model.* names) and no source location.
TEST(HfConfigErrors, NameTheHuggingFaceFields) {
  const std::string dir = std::string(MOEX_SOURCE_DIR) + "/tests/fixtures/hf/";
  auto error_of = [&](const char* arch, const char* field, const nlohmann::json& value) {
    nlohmann::json config = nlohmann::json::parse(std::ifstream(dir + arch + "/model/config.json"));
    config[field] = value;
    try {
      hf_config_from_string(config.dump(), "config.json");
    } catch (const Error& e) {
      return e.message();
    }
    return std::string("no error");
  };
  struct Case {
    const char* arch;
    const char* field;
    nlohmann::json value;
  };
  for (const Case& c :
       {Case{"qwen3_moe", "num_experts_per_tok", 99}, Case{"mixtral", "num_experts_per_tok", 99},
        Case{"qwen3_moe", "head_dim", 7}, Case{"olmoe", "rms_norm_eps", -1},
        Case{"mixtral", "num_hidden_layers", -4}, Case{"qwen3_moe", "num_key_value_heads", 3}}) {
    const std::string message = error_of(c.arch, c.field, c.value);
    EXPECT_EQ(message.rfind("config.json: ", 0), 0u) << message;
    EXPECT_NE(message.find(c.field), std::string::npos) << c.arch << ": " << message;
    EXPECT_EQ(message.find("model."), std::string::npos) << message;
    EXPECT_EQ(message.find(".cpp:"), std::string::npos) << message;
  }
  EXPECT_NE(error_of("mixtral", "num_experts_per_tok", 99).find("num_local_experts (4)"),
            std::string::npos);
}

TEST(ModelConfigFields, GeluExactAndRenormalizeAfterDropReachTheLayers) {
  const std::string text = R"({
    "vocab_size": 50, "hidden_size": 16, "num_layers": 2, "num_heads": 4, "max_seq_len": 8,
    "ffn_size": 24, "activation": "gelu", "gelu_exact": true,
    "moe": {"layer_freq": 2, "num_experts": 4, "top_k": 2, "renormalize": true,
            "renormalize_after_drop": true}})";
  const ModelConfig c = ModelConfig::from_json(JsonReader::from_string(text, "m.json"));
  EXPECT_TRUE(c.gelu_exact);
  EXPECT_TRUE(c.layers[1].moe_config.gelu_exact);
  EXPECT_TRUE(c.layers[1].moe_config.renormalize_after_drop);
  const ModelConfig plain = ModelConfig::from_json(JsonReader::from_string(
      R"({"vocab_size": 50, "hidden_size": 16, "num_layers": 2, "num_heads": 4, "max_seq_len": 8,
          "moe": {"num_experts": 4}})",
      "m.json"));
  EXPECT_FALSE(plain.gelu_exact);
  EXPECT_FALSE(plain.layers[0].moe_config.renormalize_after_drop);

  // The dense FFN and the experts switch to erf GELU: same weights, different logits.
  nlohmann::json tanh_json = nlohmann::json::parse(text);
  tanh_json["gelu_exact"] = false;
  Model exact(c), approx(ModelConfig::from_json(JsonReader::from_string(tanh_json.dump(), "t")));
  for (Model* m : {&exact, &approx}) {
    m->init_weights(7);
    // Pre-activations of order 1, where erf and tanh GELU differ by up to ~1e-3.
    float* p = m->params().flat().data<float>();
    for (int64_t i = 0; i < m->params().flat().numel(); ++i) p[i] *= 40;
  }
  const std::vector<int32_t> ids = {1, 5, 9, 13, 2, 7};
  std::vector<float> a(6 * 50), b(6 * 50);
  exact.logits(ids.data(), 1, 6, a.data());
  approx.logits(ids.data(), 1, 6, b.data());
  double diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff = std::max(diff, std::fabs(double(a[i]) - b[i]));
  EXPECT_GT(diff, 1e-4);

  auto error_of = [](const std::string& json) {
    try {
      ModelConfig::from_json(JsonReader::from_string(json, "bad.json"));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error_of(R"({"vocab_size": 5, "hidden_size": 8, "num_layers": 1, "num_heads": 2,
      "max_seq_len": 4, "gelu_exact": true})")
                .find("bad.json: gelu_exact"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"vocab_size": 5, "hidden_size": 8, "num_layers": 1, "num_heads": 2,
      "max_seq_len": 4, "moe": {"num_experts": 2, "renormalize_after_drop": true}})")
                .find("renormalize_after_drop"),
            std::string::npos);
}

}  // namespace
}  // namespace moex::model
