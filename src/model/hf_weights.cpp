#include "model/hf_weights.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "model/hf_config.h"
#include "model/model_io.h"

namespace moex::model {
namespace {

const std::string kFusedGateUp = ".experts.gate_up_proj";
const std::string kFusedDown = ".experts.down_proj";
const std::string kRouterSuffix = ".gate.weight";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// "model.layers.i.mlp" -> "model.layers.i.block_sparse_moe" (Mixtral's on-disk module name)
std::string mixtral_prefix(const std::string& mlp_prefix) {
  return mlp_prefix.substr(0, mlp_prefix.size() - 3) + "block_sparse_moe";
}

std::string expert_name(const std::string& prefix, int64_t j, const std::string& leaf) {
  return prefix + ".experts." + std::to_string(j) + "." + leaf + ".weight";
}

class Loader {
 public:
  explicit Loader(const std::string& path) : ckpt_(io::SafetensorsCheckpoint::open(path)) {
    // Errors about absent tensors name the file a reader would look in: the single
    // model.safetensors, or the sharded checkpoint's index.
    path_ = ckpt_.shards().size() == 1 ? ckpt_.shards()[0].path()
            : std::filesystem::is_directory(path)
                ? (std::filesystem::path(path) / io::kSafetensorsIndexName).string()
                : path;
  }

  bool has(const std::string& name) const { return ckpt_.contains(name); }

  // The first of `names` the checkpoint holds; an Error naming the checkpoint otherwise.
  std::string pick(const std::vector<std::string>& names) const {
    for (const std::string& n : names)
      if (ckpt_.contains(n)) return n;
    std::string also;
    for (size_t i = 1; i < names.size(); ++i) also += (i > 1 ? "', '" : "") + names[i];
    MOEX_THROW(path_, ": tensor '", names[0], "' is missing",
               also.empty() ? "" : " (nor is '" + also + "')");
  }

  // Reads `name` as f32, checking its shape, and marks it used.
  Tensor read(const std::string& name, const Shape& shape) {
    const Tensor t = ckpt_.weight_f32(name);
    MOEX_CHECK(t.shape() == shape, ckpt_.file_of(name).path(), ": tensor '", name, "' has shape ",
               t.shape().str(), ", the model expects ", shape.str());
    check_finite_weights(t, ckpt_.file_of(name).path(), name);
    used_.insert(name);
    return t;
  }
  Shape shape_of(const std::string& name) const { return ckpt_.entry(name).shape; }
  const std::string& file_of(const std::string& name) const { return ckpt_.file_of(name).path(); }
  void use(const std::string& name) { used_.insert(name); }

  void check_all_used() const {
    for (const std::string& name : ckpt_.names())
      if (!used_.count(name) && !ends_with(name, "rotary_emb.inv_freq"))
        MOEX_THROW(ckpt_.file_of(name).path(), ": unexpected tensor '", name, "'");
  }

 private:
  std::string path_;
  io::SafetensorsCheckpoint ckpt_;
  std::set<std::string> used_;
};

void copy_rows(const Tensor& src, float* dst) {
  const float* s = src.data<float>();
  std::copy(s, s + src.numel(), dst);
}

// dst[e] (rows x cols) = src[e]^T where src is [E, cols, rows].
void copy_transposed(const Tensor& src, int64_t experts, int64_t rows, int64_t cols, float* dst) {
  const float* s = src.data<float>();
  for (int64_t e = 0; e < experts; ++e)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c)
        dst[(e * rows + r) * cols + c] = s[(e * cols + c) * rows + r];
}

// A fused expert tensor [E, rows, cols]; transformers 5.x saves [E, rows, cols] (gate_up_proj
// [E, 2F, d], down_proj [E, d, F]); [E, cols, rows] is accepted too where it is unambiguous.
void load_fused(Loader& in, const std::string& name, const Shape& shape, float* dst) {
  const Shape got = in.shape_of(name);
  const Shape transposed{shape[0], shape[2], shape[1]};
  if (got == transposed && shape[1] != shape[2]) {
    copy_transposed(in.read(name, transposed), shape[0], shape[1], shape[2], dst);
    return;
  }
  copy_rows(in.read(name, shape), dst);
}

void load_experts(Loader& in, const std::string& param, const Shape& shape, float* dst) {
  const bool gate_up = ends_with(param, kFusedGateUp);
  const std::string prefix =
      param.substr(0, param.size() - (gate_up ? kFusedGateUp : kFusedDown).size());
  if (in.has(param)) {
    load_fused(in, param, shape, dst);
    return;
  }
  const std::string legacy = mixtral_prefix(prefix);
  const int64_t experts = shape[0], rows = shape[1], cols = shape[2];
  for (int64_t j = 0; j < experts; ++j) {
    float* e = dst + j * rows * cols;
    if (gate_up) {  // gate rows then up rows
      const int64_t f = rows / 2;
      const std::string g =
          in.pick({expert_name(prefix, j, "gate_proj"), expert_name(legacy, j, "w1"), param});
      copy_rows(in.read(g, Shape{f, cols}), e);
      const std::string u =
          in.pick({expert_name(prefix, j, "up_proj"), expert_name(legacy, j, "w3"), param});
      copy_rows(in.read(u, Shape{f, cols}), e + f * cols);
    } else {
      const std::string d =
          in.pick({expert_name(prefix, j, "down_proj"), expert_name(legacy, j, "w2"), param});
      copy_rows(in.read(d, Shape{rows, cols}), e);
    }
  }
}

}  // namespace

ParamBuffer load_hf_weights(Model& model, const std::string& path) {
  Loader in(path);
  const ParamBuffer params = model.host_params();
  for (int i = 0; i < params.size(); ++i) {
    const std::string& name = params.name(i);
    const Tensor& dst = params.tensor(i);
    // A tensor-parallel part is read whole, then this rank's part is kept.
    const Shape whole = whole_shape(model, i);
    const Tensor read = whole == dst.shape() ? dst : Tensor::empty(whole, DType::kF32);
    float* out = read.data<float>();
    if (ends_with(name, ".mlp" + kFusedGateUp) || ends_with(name, ".mlp" + kFusedDown)) {
      load_experts(in, name, whole, out);
    } else if (ends_with(name, ".mlp" + kRouterSuffix)) {
      const std::string mlp = name.substr(0, name.size() - kRouterSuffix.size());
      copy_rows(in.read(in.pick({name, mixtral_prefix(mlp) + kRouterSuffix}), whole), out);
    } else {
      copy_rows(in.read(in.pick({name}), whole), out);
    }
    if (read.raw_data() != dst.raw_data()) {
      const Tensor part = local_part(model, i, read, path + ": tensor '" + name + "'");
      std::copy(part.data<float>(), part.data<float>() + part.numel(), dst.data<float>());
    }
  }
  // A tied checkpoint may still carry the head; the model reads the embedding.
  if (model.config().tie_embeddings && in.has("lm_head.weight")) in.use("lm_head.weight");
  in.check_all_used();
  model.store_host_params(params);
  return params;
}

void save_hf_model(const Model& model, const std::string& dir, const std::string& architecture,
                   uint64_t max_shard_bytes) {
  // Checks that the model fits the architecture before anything is written.
  const nlohmann::json config = hf_config_to_json(model.config(), architecture);
  const bool mixtral = architecture == "MixtralForCausalLM";
  std::map<std::string, Tensor> tensors;
  const ParamBuffer params = model.host_params();
  for (int i = 0; i < params.size(); ++i) {
    const std::string& name = params.name(i);
    const Tensor& t = params.tensor(i);
    const bool gate_up = ends_with(name, ".mlp" + kFusedGateUp);
    const bool down = ends_with(name, ".mlp" + kFusedDown);
    const bool router = ends_with(name, ".mlp" + kRouterSuffix);
    if (!gate_up && !down && !router) {
      tensors[name] = t;
      continue;
    }
    const std::string mlp = name.substr(0, name.size() - (gate_up ? kFusedGateUp
                                                          : down  ? kFusedDown
                                                                  : kRouterSuffix)
                                                             .size());
    const std::string prefix = mixtral ? mixtral_prefix(mlp) : mlp;
    if (router) {
      tensors[prefix + kRouterSuffix] = t;
      continue;
    }
    const int64_t rows = t.dim(1), cols = t.dim(2);
    for (int64_t j = 0; j < t.dim(0); ++j) {
      const Tensor e = t.slice(j, j + 1).view(Shape{rows, cols});
      if (gate_up) {
        tensors[expert_name(prefix, j, mixtral ? "w1" : "gate_proj")] = e.slice(0, rows / 2);
        tensors[expert_name(prefix, j, mixtral ? "w3" : "up_proj")] = e.slice(rows / 2, rows);
      } else {
        tensors[expert_name(prefix, j, mixtral ? "w2" : "down_proj")] = e;
      }
    }
  }
  std::filesystem::create_directories(dir);
  io::save_safetensors_sharded(dir, tensors, max_shard_bytes, {{"format", "pt"}});
  io::write_file_atomic(dir + "/config.json", config.dump(2) + "\n");
}

}  // namespace moex::model
