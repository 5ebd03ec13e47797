// load_model refuses a config.json that describes a model larger than its checkpoint before
// building (allocating) the model.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "model/model_io.h"

namespace moex::model {
namespace {

namespace fs = std::filesystem;

TEST(LoadModel, ConfigLargerThanTheCheckpointIsAnErrorBeforeAllocation) {
  const std::string small = R"({"vocab_size": 30, "hidden_size": 16, "num_layers": 1,
      "num_heads": 2, "max_seq_len": 8, "ffn_size": 24})";
  const fs::path dir =
      fs::temp_directory_path() / ("moex_load_model_test_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  {
    Model model(ModelConfig::from_json(JsonReader::from_string(small, "small")));
    model.init_weights(1);
    save_model(model, small, dir.string());
  }
  EXPECT_EQ(load_model(dir.string())->config().hidden_size, 16);

  // The same weights under a config of ~10^13 parameters: one clear error, no allocation.
  std::ofstream(dir / "config.json") << R"({"model_type": "moex", "moex_model": {
      "vocab_size": 30, "hidden_size": 16, "num_layers": 1, "num_heads": 2, "max_seq_len": 8,
      "ffn_size": 24, "moe": {"num_experts": 4096, "ffn_size": 200000000}}})";
  try {
    load_model(dir.string());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("config.json: describes a model of"), std::string::npos) << message;
    EXPECT_NE(message.find("holds"), std::string::npos) << message;
  }
  fs::remove_all(dir);
}

// A non-finite weight (a corrupt or diverged checkpoint) is an error naming the file, the tensor
// and the element, not a NaN loss or a run of one token later.
TEST(LoadModel, NonFiniteWeightIsAnErrorNamingTheTensor) {
  const std::string config = R"({"vocab_size": 30, "hidden_size": 16, "num_layers": 1,
      "num_heads": 2, "max_seq_len": 8, "ffn_size": 24})";
  const fs::path dir =
      fs::temp_directory_path() / ("moex_load_nonfinite_test_" + std::to_string(::getpid()));
  for (const float bad : {std::nanf(""), INFINITY}) {
    fs::remove_all(dir);
    fs::create_directories(dir);
    Model model(ModelConfig::from_json(JsonReader::from_string(config, "small")));
    model.init_weights(1);
    const int index = model.params().index_of("model.layers.0.mlp.up_proj.weight");
    ASSERT_GE(index, 0);
    model.params().tensor(index).data<float>()[5] = bad;
    save_model(model, config, dir.string());
    try {
      load_model(dir.string());
      ADD_FAILURE() << "no error for " << bad;
    } catch (const Error& e) {
      const std::string message = e.message();
      for (const std::string& part :
           {std::string("model.safetensors"), std::string("'model.layers.0.mlp.up_proj.weight'"),
            std::string("at element 5")})
        EXPECT_NE(message.find(part), std::string::npos) << part << " in: " << message;
    }
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace moex::model
