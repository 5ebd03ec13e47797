#include "model/model_io.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>

#include "dist/communicator.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "model/hf_config.h"
#include "model/hf_weights.h"

namespace moex::model {
namespace {

// A tensor-parallel split along `dim` of a tensor of shape s, in `blocks` equal blocks of that
// dimension each split alike, seen as [outer, len, inner]: outer = s[0..dim) * blocks, len =
// s[dim] / blocks, inner = s[dim+1..). Part p of the whole holds, for each outer index o, elements
// [p * len, (p + 1) * len) of the whole's [outer, parts * len, inner] view.
struct SplitView {
  int64_t outer = 1, len = 1, inner = 1;
};

SplitView split_view(const Shape& local, int dim, int blocks) {
  SplitView v;
  for (int i = 0; i < dim; ++i) v.outer *= local[i];
  v.outer *= blocks;
  v.len = local[dim] / blocks;
  for (int i = dim + 1; i < local.ndim(); ++i) v.inner *= local[i];
  return v;
}

// The whole of entry i's tensor-parallel part: the tp group's parts in rank order.
Tensor gather_tensor_parallel(const TensorParallel& tp, const ParamBuffer& params, int i,
                              const Tensor& local) {
  const int64_t parts = tp.size();
  Tensor all = Tensor::empty(Shape{parts, local.numel()}, DType::kF32);
  tp.all_gather(local, all);
  Shape global = local.shape();
  global[params.split_dim(i)] *= parts;
  Tensor whole = Tensor::empty(global, DType::kF32);
  const SplitView v = split_view(local.shape(), params.split_dim(i), params.split_blocks(i));
  const int64_t block = v.len * v.inner;
  const float* src = all.data<float>();
  float* dst = whole.data<float>();
  for (int64_t p = 0; p < parts; ++p)
    for (int64_t o = 0; o < v.outer; ++o)
      std::copy(src + (p * v.outer + o) * block, src + (p * v.outer + o + 1) * block,
                dst + (o * parts + p) * block);
  return whole;
}

}  // namespace

Shape whole_shape(const Model& model, int index) {
  dist::Communicator* group = model.expert_group();
  const ParamBuffer& params = model.params();
  const TensorParallel& tp = model.tensor_parallel();
  Shape whole = params.tensor(index).shape();
  if (group && group->size() > 1 && model.is_expert_param(index)) whole[0] *= group->size();
  if (tp.active() && params.split_dim(index) >= 0) whole[params.split_dim(index)] *= tp.size();
  return whole;
}

std::map<std::string, Tensor> gather_named_tensors(const Model& model, const Tensor& flat) {
  const ParamBuffer& params = model.params();
  dist::Communicator* group = model.expert_group();
  const TensorParallel& tp = model.tensor_parallel();
  const int ep = group ? group->size() : 1;
  std::map<std::string, Tensor> out;
  for (int i = 0; i < params.size(); ++i) {
    const Tensor& t = params.tensor(i);
    Tensor local = flat.slice(params.offset(i), params.offset(i) + t.numel()).view(t.shape());
    // Tensor-parallel parts first (the tp group holds the same experts), then the ep group's
    // experts.
    if (tp.active() && params.split_dim(i) >= 0)
      local = gather_tensor_parallel(tp, params, i, local);
    if (ep == 1 || !model.is_expert_param(i)) {
      out[params.name(i)] = local;
      continue;
    }
    Shape global = local.shape();
    global[0] *= ep;  // rank p holds experts [p * El, (p + 1) * El): rank order is expert order
    Tensor full = Tensor::empty(global, DType::kF32);
    group->all_gather(local.data<float>(), full.data<float>(), local.numel());
    out[params.name(i)] = full;
  }
  return out;
}

Tensor local_part(const Model& model, int index, const Tensor& full, const std::string& what) {
  dist::Communicator* group = model.expert_group();
  const ParamBuffer& params = model.params();
  const Tensor& t = params.tensor(index);
  const TensorParallel& tp = model.tensor_parallel();
  const int split = params.split_dim(index);
  const int64_t parts = tp.active() && split >= 0 ? tp.size() : 1;
  const Shape whole = whole_shape(model, index);
  MOEX_CHECK(full.shape() == whole, what, " has shape ", full.shape().str(), ", the model expects ",
             whole.str());
  // This rank's experts (dim 0), then its tensor-parallel part.
  Tensor part = full;
  if (group && group->size() > 1 && model.is_expert_param(index))
    part = full.slice(group->rank() * t.dim(0), (group->rank() + 1) * t.dim(0));
  if (parts == 1) return part;
  Tensor local = Tensor::empty(t.shape(), DType::kF32);
  const SplitView v = split_view(t.shape(), split, params.split_blocks(index));
  const int64_t block = v.len * v.inner;
  const float* src = part.data<float>();
  for (int64_t o = 0; o < v.outer; ++o)
    std::copy(src + (o * parts + tp.rank()) * block, src + (o * parts + tp.rank() + 1) * block,
              local.data<float>() + o * block);
  return local;
}

void save_model(const Model& model, const std::string& model_json, const std::string& dir,
                bool write, const Tensor& weights) {
  // Without tensors to gather over ranks, the model's own buffer is written where it is, a tensor
  // at a time (bf16 widened): no host copy of the whole model. An inference model's fp32 routers
  // live beside it, so it goes through host_params like a split model.
  const bool in_place = !model.split_over_ranks() && !model.keeps_fp32_copies();
  const Tensor flat = weights.defined() ? weights
                      : in_place        ? model.params().flat()
                                        : model.host_params().flat();
  MOEX_CHECK(flat.numel() == model.params().total_elements() &&
                 (flat.dtype() == DType::kF32 ||
                  (flat.dtype() == DType::kBF16 && !model.split_over_ranks())) &&
                 (flat.device().is_cpu() || !model.split_over_ranks()),
             "save_model: the weights must be the buffer's layout, fp32 on the host when tensor "
             "or expert parallelism gathers them");
  const std::map<std::string, Tensor> tensors = gather_named_tensors(model, flat);
  if (!write) return;
  nlohmann::json config;
  config["model_type"] = "moex";
  config["architectures"] = {"MoexForCausalLM"};
  config["moex_model"] = nlohmann::json::parse(model_json);
  io::write_file_atomic(dir + "/config.json", config.dump(2) + "\n");
  io::SafetensorsSaveOptions options;
  options.widen_bf16 = true;  // checkpoints hold fp32 (docs/gpu-model.md §bf16 master weights)
  io::save_safetensors(dir + "/" + io::kSafetensorsSingleName, tensors, options);
}

void check_finite_weights(const Tensor& weights, const std::string& file, const std::string& name) {
  const uint32_t* bits = static_cast<const uint32_t*>(weights.raw_data());  // f32
  const int64_t n = weights.numel();
  // All exponent bits set: inf or NaN. A branch-free pass over every core, then the place.
  uint32_t any = 0;
#pragma omp parallel for reduction(| : any) schedule(static)
  for (int64_t i = 0; i < n; ++i) any |= (bits[i] & 0x7f800000u) == 0x7f800000u;
  if (any == 0) return;
  const float* values = weights.data<float>();
  const int64_t bad =
      std::find_if(values, values + n, [](float v) { return !std::isfinite(v); }) - values;
  MOEX_THROW(file, ": tensor '", name, "' holds ", values[bad], " at element ", bad,
             " (a corrupt or diverged checkpoint)");
}

ParamBuffer load_weights(Model& model, const std::string& checkpoint_path) {
  const io::SafetensorsCheckpoint ckpt = io::SafetensorsCheckpoint::open(checkpoint_path);
  const ParamBuffer params = model.host_params();
  for (int i = 0; i < params.size(); ++i) {
    const std::string& name = params.name(i);
    MOEX_CHECK(ckpt.contains(name), checkpoint_path, ": tensor '", name, "' is missing");
    const Tensor src =
        local_part(model, i, ckpt.weight_f32(name), checkpoint_path + ": tensor '" + name + "'");
    const Tensor& dst = params.tensor(i);
    check_finite_weights(src, ckpt.file_of(name).path(), name);
    std::copy(src.data<float>(), src.data<float>() + src.numel(), dst.data<float>());
  }
  for (const std::string& name : ckpt.names())
    MOEX_CHECK(params.index_of(name) >= 0, checkpoint_path, ": unexpected tensor '", name, "'");
  model.store_host_params(params);
  return params;
}

namespace {

// Builds the model unless config.json describes one far larger than the checkpoint (corrupt, or
// mistaken): that is an error before gigabytes are allocated for it. Smaller mismatches go on to
// the per-tensor checks of the weight loaders, whose errors name the missing or misshapen tensor.
std::unique_ptr<Model> build_for_checkpoint(const ModelConfig& config, const std::string& dir,
                                            const std::string& config_path, Device device,
                                            const TensorParallel& tp,
                                            dist::Communicator* expert_group) {
  const io::SafetensorsCheckpoint ckpt = io::SafetensorsCheckpoint::open(dir);
  int64_t stored = 0;
  for (const std::string& name : ckpt.names()) stored += ckpt.entry(name).shape.numel();
  MOEX_CHECK(config.num_parameters() <= 2 * stored + (int64_t{1} << 20), config_path,
             ": describes a model of ", config.num_parameters(),
             " parameters, but the checkpoint in ", dir, " holds ", stored, " values");
  return std::make_unique<Model>(config, device, expert_group, tp, false,
                                 ModelState::inference(device));
}

// A model directory's config.json: the model, and whether the directory is moex's own
// ("model_type": "moex") rather than a Hugging Face model's.
struct DirConfig {
  ModelConfig model;
  bool moex = false;
};

DirConfig read_dir_config(const std::string& dir) {
  const std::string config_path = dir + "/config.json";
  const JsonReader config = JsonReader::from_file(config_path);
  if (config.get_string("model_type") != "moex") return {hf_config_from_file(config_path), false};
  config.ignore("architectures");
  return {ModelConfig::from_json(config.child("moex_model")), true};
}

}  // namespace

ModelConfig load_model_config(const std::string& dir) {
  return read_dir_config(dir).model;
}

std::unique_ptr<Model> load_model(const std::string& dir, Device device, const TensorParallel& tp,
                                  dist::Communicator* expert_group) {
  const std::string config_path = dir + "/config.json";
  const DirConfig config = read_dir_config(dir);
  const TensorParallelMisfit m =
      tensor_parallel_misfit(config.model, tp.size(), tp.slice_experts, device.is_cuda());
  MOEX_CHECK(m.message.empty(), config_path, ": tensor parallelism: ", m.option, " ", m.message);
  auto model = build_for_checkpoint(config.model, dir, config_path, device, tp, expert_group);
  if (config.moex)
    load_weights(*model, dir);
  else  // a Hugging Face model directory: hf_config.h lists what is supported
    load_hf_weights(*model, dir);
  return model;
}

}  // namespace moex::model
