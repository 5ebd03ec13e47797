// Reading and writing a model directory in the Hugging Face layout: config.json plus
// model.safetensors (or shards with model.safetensors.index.json). moex's own models carry
// their moex model config inside config.json ("model_type": "moex").
#pragma once

#include <map>
#include <memory>
#include <string>

#include "model/model.h"

namespace moex::model {

// Writes config.json and model.safetensors into `dir` (which must exist); each file atomically.
// Under expert parallelism every rank of the model's expert group calls it (the experts are
// gathered, see gather_named_tensors) and only the ranks with write = true write. weights: the
// fp32 values to save instead of the model's own, on the host in the buffer's layout [total]
// (the master weights a ZeRO optimizer keeps for a model with bf16 weights).
void save_model(const Model& model, const std::string& model_json, const std::string& dir,
                bool write = true, const Tensor& weights = Tensor());

// Every tensor of `flat` (a buffer in the layout of model.params(): the weights or an optimizer
// moment) under its parameter name. Expert tensors held as shards (Model::expert_group) are
// gathered over the group into the global [E, ...] tensors, and tensor-parallel parts over the tp
// group into the whole tensors, so the result equals a single-process model's; every rank of the
// groups must call it then, and flat must be f32 on the host. Otherwise (Model::split_over_ranks
// false) the result is views of flat, on its device and in its dtype.
std::map<std::string, Tensor> gather_named_tensors(const Model& model, const Tensor& flat);
// What parameter `index` holds of its whole tensor `full` (all experts, every tensor-parallel part:
// what a checkpoint stores under its name): the rows of this rank's experts for an expert shard,
// then this rank's part of a tensor-parallel split, `full` itself for a tensor held whole. A
// `full` of another shape is an error "<what> has shape ..., the model expects <whole shape>"
// (checked against the whole, since a smaller tensor can have exactly the shape of a part).
Tensor local_part(const Model& model, int index, const Tensor& full, const std::string& what);

// Throws unless every value of weights (f32, on the host) is finite: a NaN or infinite weight
// would only show later as a NaN loss or a run of one token. The error names `file`, tensor
// `name` and the element.
void check_finite_weights(const Tensor& weights, const std::string& file, const std::string& name);
// The shape of the whole tensor of which parameter `index` holds a part.
Shape whole_shape(const Model& model, int index);

// The model a directory's config.json describes (moex's own or a Hugging Face architecture);
// errors name the file and field.
ModelConfig load_model_config(const std::string& dir);

// Opens a model directory: config.json names the architecture; weights are checked against the
// model's parameters (missing, unexpected or misshapen tensors are errors naming the file and
// tensor). With an active `tp` each rank of its group keeps its parts of the split tensors (every
// rank of the group calls it). With an `expert_group` every MoE layer keeps only this rank's E/ep
// experts (Model's constructor; every rank of the group calls it). The model is made for inference
// (ModelState::inference: no gradients; bf16 weights alone on a GPU); a run that trains loaded
// weights loads them into its own model (load_weights, load_hf_weights).
std::unique_ptr<Model> load_model(const std::string& dir, Device device = Device::cpu(),
                                  const TensorParallel& tp = {},
                                  dist::Communicator* expert_group = nullptr);

// Copies the checkpoint's tensors into the model's parameters (f32; bf16/f16 converted). Returns
// them as read, fp32 on the host, before a bf16 master rounds them.
ParamBuffer load_weights(Model& model, const std::string& checkpoint_path);

}  // namespace moex::model
