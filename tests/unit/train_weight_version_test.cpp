// Everything that writes a model's weights in place marks them written (Tensor::version), which
// is what the GPU MoE layer's device-weight cache compares (src/moe/moe_layer_dispatch.h).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "model/model.h"
#include "model/model_io.h"
#include "train/optimizer.h"

namespace moex::train {
namespace {

TEST(WeightVersion, InitLoadAndOptimizerStepsMarkEveryWeightWritten) {
  const std::string model_json = R"({
    "vocab_size": 30, "hidden_size": 16, "num_layers": 2, "num_heads": 4, "max_seq_len": 8,
    "ffn_size": 24, "moe": {"layer_freq": 1, "num_experts": 16, "top_k": 2, "ffn_size": 8}})";
  const ModelConfig config = ModelConfig::from_json(JsonReader::from_string(model_json, "m.json"));
  model::Model model(config);
  ParamBuffer& params = model.params();
  auto versions = [&] {
    std::vector<uint64_t> v;
    for (int i = 0; i < params.size(); ++i) v.push_back(params.tensor(i).version());
    return v;
  };
  auto expect_all_moved = [&](const std::vector<uint64_t>& before, const char* what) {
    const std::vector<uint64_t> after = versions();
    for (int i = 0; i < params.size(); ++i)
      EXPECT_GT(after[i], before[i]) << what << ": " << params.name(i);
  };

  std::vector<uint64_t> before = versions();
  model.init_weights(1);
  expect_all_moved(before, "init_weights");

  OptimizerConfig oc;
  AdamW adam(params, oc);
  model.grads().flat().data<float>()[0] = 1.0f;  // any gradient: the step writes every weight
  before = versions();
  adam.step(params, model.grads(), 1e-3, 1);
  expect_all_moved(before, "optimizer step");

  const std::string dir = (std::filesystem::temp_directory_path() /
                           ("moex_weight_version_" + std::to_string(::getpid())))
                              .string();
  std::filesystem::create_directories(dir);
  model::save_model(model, model_json, dir);
  before = versions();
  model::load_weights(model, dir + "/model.safetensors");
  expect_all_moved(before, "load_weights");
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace moex::train
