// ModelConfig::to_json: from_json(to_json(c)) describes the same model as c, for every config in
// configs/ (recipes/ too) and the Hugging Face fixtures' configs: the same parameter names and
// shapes, and the same logits from the same weights.
#include <gtest/gtest.h>

#include <filesystem>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "model/hf_config.h"
#include "model/hf_weights.h"
#include "model/model.h"
#include "model/model_io.h"

namespace moex::model {
namespace {

namespace fs = std::filesystem;

ModelConfig round_trip(const ModelConfig& c) {
  const JsonReader r = JsonReader::from_string(c.to_json().dump(2), "to_json");
  return ModelConfig::from_json(r);
}

std::vector<int32_t> random_ids(int64_t n, int64_t vocab) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>(philox_u32(7, i, 0) % vocab);
  return ids;
}

// Same parameters (names, shapes) and, with a's weights copied into b, the same logits.
void expect_same_model(Model& a, Model& b, const std::string& what) {
  ASSERT_EQ(a.params().size(), b.params().size()) << what;
  for (int i = 0; i < a.params().size(); ++i) {
    EXPECT_EQ(a.params().name(i), b.params().name(i)) << what;
    EXPECT_EQ(a.params().tensor(i).shape(), b.params().tensor(i).shape())
        << what << " " << a.params().name(i);
  }
  b.store_host_params(a.host_params());
  const int64_t batch = 2, seq = std::min<int64_t>(8, a.config().max_seq_len);
  const std::vector<int32_t> ids = random_ids(batch * seq, a.config().vocab_size);
  std::vector<float> la(static_cast<size_t>(batch * seq * a.config().vocab_size)), lb(la.size());
  a.logits(ids.data(), batch, seq, la.data());
  b.logits(ids.data(), batch, seq, lb.data());
  EXPECT_EQ(la, lb) << what;
}

TEST(ModelConfigJson, ShippedConfigsRoundTrip) {
  int checked = 0, built = 0;
  for (const auto& e : fs::recursive_directory_iterator(fs::path(MOEX_SOURCE_DIR) / "configs")) {
    if (e.path().extension() != ".json") continue;
    const JsonReader root = JsonReader::from_file(e.path().string());
    if (!root.has("model")) continue;
    const std::string name = fs::relative(e.path(), MOEX_SOURCE_DIR).string();
    const ModelConfig c = ModelConfig::from_json(root.child("model"));
    const ModelConfig back = round_trip(c);
    EXPECT_EQ(back.to_json(), c.to_json()) << name;
    EXPECT_EQ(back.num_parameters(), c.num_parameters()) << name;
    ASSERT_EQ(back.layers.size(), c.layers.size()) << name;
    for (size_t i = 0; i < c.layers.size(); ++i) {
      EXPECT_EQ(back.layers[i].moe, c.layers[i].moe) << name << " layer " << i;
      EXPECT_EQ(back.layers[i].moe_config.num_experts, c.layers[i].moe_config.num_experts);
    }
    ++checked;
    if (c.num_parameters() > 30'000'000) continue;  // the shapes above; too large to build here
    Model a(c), b(back);
    a.init_weights(3);
    expect_same_model(a, b, name);
    ++built;
  }
  EXPECT_GE(checked, 20);
  EXPECT_GE(built, 10);
}

TEST(ModelConfigJson, HuggingFaceFixturesRoundTrip) {
  for (const char* arch : {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe"}) {
    const std::string dir =
        (fs::path(MOEX_SOURCE_DIR) / "tests/fixtures/hf" / arch / "model").string();
    const ModelConfig c = hf_config_from_file(dir + "/config.json");
    const ModelConfig back = round_trip(c);
    EXPECT_EQ(back.to_json(), c.to_json()) << arch;
    EXPECT_EQ(back.num_parameters(), c.num_parameters()) << arch;
    const std::unique_ptr<Model> hf = load_model(dir);
    Model b(back);
    load_hf_weights(b, dir);  // the checkpoint's names fit the round-tripped model
    expect_same_model(*hf, b, arch);
  }
}

TEST(ModelConfigJson, MoELayersThatDifferBeyondTheExpertCountAreRefused) {
  const JsonReader r = JsonReader::from_string(R"({"vocab_size": 16, "hidden_size": 8,
      "num_layers": 2, "num_heads": 2, "max_seq_len": 8,
      "moe": {"num_experts": [2, 4], "top_k": 2}})", "pyramid.json");
  ModelConfig c = ModelConfig::from_json(r);
  EXPECT_EQ(round_trip(c).to_json(), c.to_json());  // only the expert counts differ: a list
  c.layers[1].moe_config.top_k = 1;
  try {
    c.to_json();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer 1's top_k (1) differs"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace moex::model
