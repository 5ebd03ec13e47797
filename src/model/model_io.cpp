#include "model/model_io.h"

#include <fstream>
#include <map>
#include <sstream>

#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "model/hf_config.h"
#include "model/hf_weights.h"

namespace moex::model {

void save_model(const Model& model, const std::string& model_json, const std::string& dir) {
  nlohmann::json config;
  config["model_type"] = "moex";
  config["architectures"] = {"MoexForCausalLM"};
  config["moex_model"] = nlohmann::json::parse(model_json);
  io::write_file_atomic(dir + "/config.json", config.dump(2) + "\n");
  std::map<std::string, Tensor> tensors;
  const ParamBuffer params = model.host_params();
  for (int i = 0; i < params.size(); ++i) tensors[params.name(i)] = params.tensor(i);
  io::save_safetensors(dir + "/" + io::kSafetensorsSingleName, tensors);
}

void load_weights(Model& model, const std::string& checkpoint_path) {
  const io::SafetensorsCheckpoint ckpt = io::SafetensorsCheckpoint::open(checkpoint_path);
  const ParamBuffer params = model.host_params();
  for (int i = 0; i < params.size(); ++i) {
    const std::string& name = params.name(i);
    MOEX_CHECK(ckpt.contains(name), checkpoint_path, ": tensor '", name, "' is missing");
    const Tensor src = ckpt.weight_f32(name);
    const Tensor& dst = params.tensor(i);
    MOEX_CHECK(src.shape() == dst.shape(), checkpoint_path, ": tensor '", name, "' has shape ",
               src.shape().str(), ", the model expects ", dst.shape().str());
    std::copy(src.data<float>(), src.data<float>() + src.numel(), dst.data<float>());
  }
  for (const std::string& name : ckpt.names())
    MOEX_CHECK(params.index_of(name) >= 0, checkpoint_path, ": unexpected tensor '", name, "'");
  model.store_host_params(params);
}

namespace {

// Builds the model unless config.json describes one far larger than the checkpoint (corrupt, or
// mistaken): that is an error before gigabytes are allocated for it. Smaller mismatches go on to
// the per-tensor checks of the weight loaders, whose errors name the missing or misshapen tensor.
std::unique_ptr<Model> build_for_checkpoint(const ModelConfig& config, const std::string& dir,
                                            const std::string& config_path, Device device) {
  const io::SafetensorsCheckpoint ckpt = io::SafetensorsCheckpoint::open(dir);
  int64_t stored = 0;
  for (const std::string& name : ckpt.names()) stored += ckpt.entry(name).shape.numel();
  MOEX_CHECK(config.num_parameters() <= 2 * stored + (int64_t{1} << 20), config_path,
             ": describes a model of ", config.num_parameters(),
             " parameters, but the checkpoint in ", dir, " holds ", stored, " values");
  return std::make_unique<Model>(config, device);
}

}  // namespace

std::unique_ptr<Model> load_model(const std::string& dir, Device device) {
  const std::string config_path = dir + "/config.json";
  const JsonReader config = JsonReader::from_file(config_path);
  const std::string type = config.get_string("model_type");
  if (type != "moex") {  // a Hugging Face model directory: hf_config.h lists what is supported
    auto model = build_for_checkpoint(hf_config_from_file(config_path), dir, config_path, device);
    load_hf_weights(*model, dir);
    return model;
  }
  config.ignore("architectures");
  auto model =
      build_for_checkpoint(ModelConfig::from_json(config.child("moex_model")), dir, config_path,
                           device);
  load_weights(*model, dir);
  return model;
}

}  // namespace moex::model
