// Every config shipped in configs/ parses (unknown fields would be errors) and builds a model.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

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
  EXPECT_EQ(tiny_model.params().total_elements() >= tiny.num_parameters(), true);
}

}  // namespace
}  // namespace moex::model
