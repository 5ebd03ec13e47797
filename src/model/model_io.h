// Reading and writing a model directory in the Hugging Face layout: config.json plus
// model.safetensors (or shards with model.safetensors.index.json). moex's own models carry
// their moex model config inside config.json ("model_type": "moex").
#pragma once

#include <memory>
#include <string>

#include "model/model.h"

namespace moex::model {

// Writes config.json and model.safetensors into `dir` (which must exist); each file atomically.
void save_model(const Model& model, const std::string& model_json, const std::string& dir);

// Opens a model directory: config.json names the architecture; weights are checked against the
// model's parameters (missing, unexpected or misshapen tensors are errors naming the file and
// tensor).
std::unique_ptr<Model> load_model(const std::string& dir, Device device = Device::cpu());

// Copies the checkpoint's tensors into the model's parameters (f32; bf16/f16 converted).
void load_weights(Model& model, const std::string& checkpoint_path);

}  // namespace moex::model
