#include "model/hf_config.h"

#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include "core/file_util.h"
#include "core/json_reader.h"
#include "core/logging.h"

namespace moex::model {
namespace {

enum class Arch { kMixtral, kQwen2Moe, kQwen3Moe, kOlmoe };

struct ArchName {
  const char* architecture;
  const char* model_type;
  Arch arch;
};
constexpr ArchName kArchs[] = {{"MixtralForCausalLM", "mixtral", Arch::kMixtral},
                               {"Qwen2MoeForCausalLM", "qwen2_moe", Arch::kQwen2Moe},
                               {"Qwen3MoeForCausalLM", "qwen3_moe", Arch::kQwen3Moe},
                               {"OlmoeForCausalLM", "olmoe", Arch::kOlmoe}};

const ArchName* find_arch(const std::string& architecture) {
  for (const ArchName& a : kArchs)
    if (architecture == a.architecture) return &a;
  return nullptr;
}

std::string supported_list() {
  std::string s;
  for (const ArchName& a : kArchs) s += (s.empty() ? "" : ", ") + std::string(a.architecture);
  return s;
}

// Reads config.json fields with the strict reader, plus null-awareness (HF writes null for
// "not set": head_dim, sliding_window, clip_qkv, rope_scaling, token ids).
class HfFields {
 public:
  HfFields(const std::string& text, const std::string& source)
      : reader_(JsonReader::from_string(text, source)), raw_(parse_json(text, source)) {}
  const JsonReader& reader() const { return reader_; }
  bool set(const std::string& key) const {  // present and not null
    return raw_.contains(key) && !raw_.at(key).is_null();
  }
  // Absent or null: marks it read and returns true.
  bool unset(const std::string& key) const {
    if (set(key)) return false;
    if (raw_.contains(key)) reader_.ignore(key);
    return true;
  }
  int64_t get_int(const std::string& key, int64_t fallback) const {
    return unset(key) ? fallback : reader_.get_int(key);
  }
  // A token id: an integer, a list of integers (the first is used), or null.
  int64_t token_id(const std::string& key) const {
    if (unset(key)) return -1;
    if (raw_.at(key).is_array()) {
      const std::vector<int64_t> ids = reader_.get_int_array(key);
      return ids.empty() ? -1 : ids[0];
    }
    return reader_.get_int(key);
  }
  const nlohmann::json& raw(const std::string& key) const { return raw_.at(key); }
  [[noreturn]] void fail(const std::string& key, const std::string& message) const {
    reader_.fail(key, message);
  }

 private:
  JsonReader reader_;
  nlohmann::json raw_;
};

void read_rope(const HfFields& f, ModelConfig& c) {
  const JsonReader& r = f.reader();
  if (!f.unset("rope_scaling")) f.fail("rope_scaling", "is set; rope scaling is not supported");
  c.rope_theta = r.get_double("rope_theta", 10000.0);  // transformers 4.x
  if (!f.unset("rope_parameters")) {                   // transformers 5.x
    const JsonReader rope = r.child("rope_parameters");
    const std::string type = rope.get_string("rope_type", "default");
    if (type != "default")
      rope.fail("rope_type", "is '" + type + "'; only \"default\" rope is supported");
    c.rope_theta = rope.get_double("rope_theta", c.rope_theta);
    rope.finish();
  }
}

// Qwen's sliding-window switches: the window must not be in use.
void check_no_sliding_window(const HfFields& f) {
  const JsonReader& r = f.reader();
  if (r.get_bool("use_sliding_window", false))
    f.fail("use_sliding_window", "is true; sliding-window attention is not supported");
  r.ignore("sliding_window");     // only used with use_sliding_window
  r.ignore("max_window_layers");  // likewise
  if (r.has("layer_types")) {
    if (!f.raw("layer_types").is_array()) f.fail("layer_types", "must be a list");
    for (const auto& t : f.raw("layer_types"))
      if (!t.is_string() || t.get<std::string>() != "full_attention")
        f.fail("layer_types", "has '" + t.dump() + "'; only \"full_attention\" is supported");
    r.ignore("layer_types");
  }
}

}  // namespace

bool is_hf_architecture(const std::string& architecture) {
  return find_arch(architecture) != nullptr;
}

ModelConfig hf_config_from_string(const std::string& text, const std::string& source) {
  const HfFields f(text, source);
  const JsonReader& r = f.reader();
  if (!f.set("architectures") || !f.raw("architectures").is_array() ||
      f.raw("architectures").size() != 1 || !f.raw("architectures")[0].is_string())
    f.fail("architectures", "must be a list of one architecture name");
  r.ignore("architectures");
  const std::string architecture = f.raw("architectures")[0].get<std::string>();
  const ArchName* an = find_arch(architecture);
  if (!an)
    f.fail("architectures",
           "'" + architecture + "' is not supported (supported: " + supported_list() + ")");
  const Arch arch = an->arch;
  const std::string model_type = r.get_string("model_type", an->model_type);
  if (model_type != an->model_type)
    f.fail("model_type",
           "'" + model_type + "' does not match " + architecture + " ('" + an->model_type + "')");

  // Known fields with no effect on the math moex does.
  for (const char* key :
       {"transformers_version", "dtype", "torch_dtype", "use_cache", "output_router_logits",
        "pad_token_id", "_name_or_path", "tokenizer_class", "return_dict", "output_hidden_states",
        "output_attentions", "use_return_dict"})
    r.ignore(key);

  ModelConfig c;
  c.architecture = architecture;
  c.vocab_size = r.get_int("vocab_size");
  c.hidden_size = r.get_int("hidden_size");
  c.num_layers = r.get_int("num_hidden_layers");
  c.num_heads = r.get_int("num_attention_heads");
  c.num_kv_heads = f.get_int("num_key_value_heads", c.num_heads);
  c.head_dim = f.get_int("head_dim", c.num_heads > 0 ? c.hidden_size / c.num_heads : 0);
  c.ffn_size = r.get_int("intermediate_size");
  c.max_seq_len = r.get_int("max_position_embeddings");
  c.positions = PositionType::kRope;
  c.norm = NormType::kRMSNorm;
  c.norm_eps = r.get_double("rms_norm_eps", 1e-6);
  const std::string act = r.get_string("hidden_act", "silu");
  if (act != "silu") f.fail("hidden_act", "is '" + act + "'; only \"silu\" (SwiGLU) is supported");
  c.activation = ExpertActivation::kSwiGLU;
  c.tie_embeddings = r.get_bool("tie_word_embeddings", false);
  c.init_std = r.get_float("initializer_range", 0.02f);
  c.bos_id = f.token_id("bos_token_id");
  c.eos_id = f.token_id("eos_token_id");
  if (r.get_double("attention_dropout", 0.0) != 0.0)
    f.fail("attention_dropout", "is not 0; attention dropout is not supported");
  read_rope(f, c);

  MoEConfig moe;
  moe.hidden_size = c.hidden_size;
  moe.activation = ExpertActivation::kSwiGLU;
  moe.gelu_exact = false;
  moe.score_func = ScoreFunc::kSoftmax;
  moe.dropless = true;
  moe.capacity_factor_train = moe.capacity_factor_eval = 1.0f;
  moe.aux_loss_type = AuxLossType::kMixtral;
  moe.aux_loss_coef = r.get_float("router_aux_loss_coef", 0.001f);
  moe.z_loss_coef = 0.0f;
  moe.top_k = r.to_int("num_experts_per_tok", r.get_int("num_experts_per_tok", 2));
  int64_t num_experts = 0;
  int64_t sparse_step = 1;
  std::vector<int64_t> dense_layers;

  switch (arch) {
    case Arch::kMixtral: {
      num_experts = r.get_int("num_local_experts", 8);
      moe.ffn_size = c.ffn_size;
      moe.renormalize = true;  // MixtralSparseMoeBlock always divides by the top-k sum
      if (!f.unset("sliding_window"))
        f.fail("sliding_window", "is set; sliding-window attention is not supported");
      // HF multiplies the router input by U(1-eps, 1+eps) in training: moex's jitter_eps.
      moe.jitter_eps = r.get_float("router_jitter_noise", 0.0f);
      break;
    }
    case Arch::kQwen2Moe:
    case Arch::kQwen3Moe: {
      // transformers 5.x writes Qwen3-MoE's expert count as num_local_experts
      num_experts =
          f.set("num_experts") ? r.get_int("num_experts") : r.get_int("num_local_experts", 60);
      if (f.set("num_experts")) r.ignore("num_local_experts");
      moe.ffn_size = r.get_int("moe_intermediate_size");
      moe.renormalize = r.get_bool("norm_topk_prob", false);
      sparse_step = r.get_int("decoder_sparse_step", 1);
      if (sparse_step < 1) f.fail("decoder_sparse_step", "must be >= 1");
      dense_layers = r.get_int_array("mlp_only_layers");
      check_no_sliding_window(f);
      if (arch == Arch::kQwen2Moe) {
        c.qkv_bias = r.get_bool("qkv_bias", true);  // Qwen2 attention has q/k/v biases
        moe.shared_ffn_size = r.get_int("shared_expert_intermediate_size");
        if (moe.shared_ffn_size <= 0) f.fail("shared_expert_intermediate_size", "must be > 0");
        moe.shared_gate = true;  // y += sigmoid(x . shared_expert_gate) * shared_expert(x)
      } else {
        if (r.get_bool("attention_bias", false))
          f.fail("attention_bias", "is true; attention biases (o_proj too) are not supported");
        c.qk_norm = QKNorm::kPerHead;
      }
      break;
    }
    case Arch::kOlmoe: {
      num_experts = r.get_int("num_experts", 64);
      moe.ffn_size = c.ffn_size;
      moe.renormalize = r.get_bool("norm_topk_prob", false);
      if (!f.unset("clip_qkv")) f.fail("clip_qkv", "is set; clipping q/k/v is not supported");
      if (r.get_bool("attention_bias", false))
        f.fail("attention_bias", "is true; attention biases (o_proj too) are not supported");
      c.qk_norm = QKNorm::kFull;
      break;
    }
  }

  if (c.num_layers < 1)
    f.fail("num_hidden_layers", "must be >= 1, got " + std::to_string(c.num_layers));
  // Bounded before the per-layer table is allocated (ModelConfig::validate holds the same limit).
  if (c.num_layers > ModelConfig::kMaxLayers)
    f.fail("num_hidden_layers", "is " + std::to_string(c.num_layers) + "; at most " +
                                    std::to_string(ModelConfig::kMaxLayers) + " are supported");
  c.layers.assign(static_cast<size_t>(std::max<int64_t>(c.num_layers, 0)), LayerSpec{});
  std::vector<bool> is_moe(c.layers.size(), false);
  for (size_t i = 0; i < c.layers.size(); ++i)
    is_moe[i] = num_experts > 0 && (static_cast<int64_t>(i) + 1) % sparse_step == 0;
  for (int64_t i : dense_layers) {
    if (i < 0 || i >= c.num_layers)
      f.fail("mlp_only_layers",
             "names layer " + std::to_string(i) + " of " + std::to_string(c.num_layers));
    is_moe[static_cast<size_t>(i)] = false;
  }
  moe.num_experts = r.to_int("num_experts", num_experts);
  for (size_t i = 0; i < c.layers.size(); ++i) {
    c.layers[i].moe = is_moe[i];
    if (is_moe[i]) c.layers[i].moe_config = moe;
  }
  r.finish();
  try {
    c.validate();
  } catch (const Error& e) {
    // ModelConfig speaks of its own fields: the message names config.json's instead.
    const bool qwen = arch == Arch::kQwen2Moe || arch == Arch::kQwen3Moe;
    const std::pair<const char*, const char*> names[] = {
        {"model.moe.num_experts", arch == Arch::kMixtral ? "num_local_experts" : "num_experts"},
        {"model.moe.ffn_size", qwen ? "moe_intermediate_size" : "intermediate_size"},
        {"model.moe.top_k", "num_experts_per_tok"},
        {"model.moe.shared_ffn_size", "shared_expert_intermediate_size"},
        {"model.num_kv_heads", "num_key_value_heads"},
        {"model.num_layers", "num_hidden_layers"},
        {"model.num_heads", "num_attention_heads"},
        {"model.max_seq_len", "max_position_embeddings"},
        {"model.ffn_size", "intermediate_size"},
        {"model.norm_eps", "rms_norm_eps"},
        {"model.rope_theta", "rope_theta"},
        {"model.head_dim", "head_dim"},
        {"model.hidden_size", "hidden_size"},
        {"model.vocab_size", "vocab_size"},
    };
    std::string message = e.message();
    for (const auto& [ours, theirs] : names)
      for (size_t at = message.find(ours); at != std::string::npos;
           at = message.find(ours, at + std::strlen(theirs)))
        message.replace(at, std::strlen(ours), theirs);
    // MoEConfig names the expert count bare ("must be <= num_experts (8)"): Mixtral's differs.
    const std::string bare = " num_experts (";
    if (arch == Arch::kMixtral)
      for (size_t at = message.find(bare); at != std::string::npos; at = message.find(bare, at + 1))
        message.replace(at, bare.size(), " num_local_experts (");
    throw Error(source + ": " + message);
  }
  return c;
}

ModelConfig hf_config_from_file(const std::string& config_path) {
  const std::string text = read_file(config_path, kMaxConfigBytes);
  try {
    return hf_config_from_string(text, config_path);
  } catch (const nlohmann::json::exception& e) {  // the strict reader reports syntax first
    throw Error(config_path + ": " + e.what());
  }
}

nlohmann::json hf_config_to_json(const ModelConfig& c, const std::string& architecture) {
  const ArchName* an = find_arch(architecture);
  MOEX_CHECK(an, "cannot export as '", architecture, "' (supported: ", supported_list(), ")");
  const Arch arch = an->arch;
  auto need = [&](bool ok, const std::string& field, const std::string& why) {
    MOEX_CHECK(ok, "cannot export as ", architecture, ": model.", field, " ", why);
  };
  need(c.norm == NormType::kRMSNorm, "norm", "must be rmsnorm");
  need(c.activation == ExpertActivation::kSwiGLU, "activation", "must be swiglu");
  need(c.positions == PositionType::kRope, "positions", "must be rope");
  need(c.qkv_bias == (arch == Arch::kQwen2Moe), "qkv_bias",
       arch == Arch::kQwen2Moe ? "must be true" : "must be false");
  const QKNorm want_qk = arch == Arch::kQwen3Moe ? QKNorm::kPerHead
                         : arch == Arch::kOlmoe  ? QKNorm::kFull
                                                 : QKNorm::kNone;
  need(c.qk_norm == want_qk, "qk_norm", "does not match the architecture's q/k norm");

  const MoEConfig* moe = nullptr;
  std::vector<int64_t> dense_layers;
  for (size_t i = 0; i < c.layers.size(); ++i) {
    if (!c.layers[i].moe) {
      dense_layers.push_back(static_cast<int64_t>(i));
      continue;
    }
    const MoEConfig& m = c.layers[i].moe_config;
    if (!moe) moe = &m;
    need(m.num_experts == moe->num_experts && m.ffn_size == moe->ffn_size &&
             m.top_k == moe->top_k && m.renormalize == moe->renormalize &&
             m.shared_ffn_size == moe->shared_ffn_size,
         "moe", "must be the same in every MoE layer");
  }
  need(moe != nullptr, "moe", "is required (no MoE layer)");
  need(moe->score_func == ScoreFunc::kSoftmax && !moe->selection_bias, "moe.score_func",
       "must be softmax without selection bias");
  need(!moe->residual, "moe.residual", "is not part of this architecture");
  need(!moe->gumbel_second_expert && !moe->rsample, "moe", "noisy gating has no HF equivalent");
  const bool qwen = arch == Arch::kQwen2Moe || arch == Arch::kQwen3Moe;
  need(qwen || dense_layers.empty(), "moe", "every layer must be MoE in " + architecture);
  need(arch != Arch::kMixtral || moe->renormalize, "moe.renormalize", "must be true for Mixtral");
  if (arch == Arch::kQwen2Moe)
    need(moe->shared_ffn_size > 0 && moe->shared_gate, "moe.shared_ffn_size",
         "Qwen2-MoE needs a sigmoid-gated shared expert");
  else
    need(moe->shared_ffn_size == 0, "moe.shared_ffn_size", "must be 0 (no shared expert)");
  need(arch != Arch::kMixtral || moe->ffn_size == c.ffn_size || dense_layers.empty(), "ffn_size",
       "differs from the expert size");
  // What the format cannot say but the weights survive: the export routes as Hugging Face does.
  if (!moe->dropless)
    MOEX_WARN("export as ", architecture, ": model.moe.capacity_factor (",
              moe->capacity_factor_train, ", eval ", moe->capacity_factor_eval,
              ") has no Hugging Face equivalent; the exported model routes every token (dropless), "
              "so its outputs differ where this model drops tokens");
  if (moe->aux_loss_type == AuxLossType::kDeepSpeed && moe->aux_loss_coef > 0)
    MOEX_WARN("export as ", architecture, ": model.moe.aux_loss_type \"deepspeed\" has no ",
              "Hugging Face equivalent; router_aux_loss_coef applies to the Mixtral/Switch form ",
              "there");

  nlohmann::json j;
  j["architectures"] = {architecture};
  j["model_type"] = an->model_type;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_heads;
  j["num_key_value_heads"] = c.num_kv_heads;
  j["head_dim"] = c.head_dim;
  j["max_position_embeddings"] = c.max_seq_len;
  j["rms_norm_eps"] = c.norm_eps;
  j["hidden_act"] = "silu";
  j["initializer_range"] = c.init_std;
  j["tie_word_embeddings"] = c.tie_embeddings;
  j["attention_dropout"] = 0.0;
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", c.rope_theta}};
  j["bos_token_id"] = c.bos_id >= 0 ? nlohmann::json(c.bos_id) : nlohmann::json(nullptr);
  j["eos_token_id"] = c.eos_id >= 0 ? nlohmann::json(c.eos_id) : nlohmann::json(nullptr);
  j["num_experts_per_tok"] = moe->top_k;
  j["router_aux_loss_coef"] = moe->aux_loss_coef;
  j["output_router_logits"] = false;
  j["use_cache"] = true;
  j["dtype"] = "float32";
  switch (arch) {
    case Arch::kMixtral:
      j["intermediate_size"] = moe->ffn_size;
      j["num_local_experts"] = moe->num_experts;
      j["sliding_window"] = nullptr;
      j["router_jitter_noise"] = moe->jitter_eps;
      break;
    case Arch::kQwen2Moe:
    case Arch::kQwen3Moe:
      j["intermediate_size"] = c.ffn_size;
      j["moe_intermediate_size"] = moe->ffn_size;
      // as transformers 5.x writes them: Qwen3-MoE's count is num_local_experts
      j[arch == Arch::kQwen3Moe ? "num_local_experts" : "num_experts"] = moe->num_experts;
      j["norm_topk_prob"] = moe->renormalize;
      j["decoder_sparse_step"] = 1;
      j["mlp_only_layers"] = dense_layers;
      j["use_sliding_window"] = false;
      j["sliding_window"] = nullptr;
      if (arch == Arch::kQwen2Moe) {
        j["shared_expert_intermediate_size"] = moe->shared_ffn_size;
        j["qkv_bias"] = true;
      } else {
        j["attention_bias"] = false;
      }
      break;
    case Arch::kOlmoe:
      j["intermediate_size"] = moe->ffn_size;
      j["num_experts"] = moe->num_experts;
      j["norm_topk_prob"] = moe->renormalize;
      j["clip_qkv"] = nullptr;
      j["attention_bias"] = false;
      break;
  }
  return j;
}

}  // namespace moex::model
