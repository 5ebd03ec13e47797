#include "model/model_config.h"

#include <cmath>
#include <limits>
#include <string>

namespace moex {
namespace {

// More parameters than any model has (4 PB in f32); keeps every count within int64_t.
constexpr long double kMaxParameters = 1125899906842624.0L;  // 2^50

// The "moe" object: every MoEConfig option, shared by all MoE layers except the expert count.
MoEConfig parse_moe(const JsonReader& moe, const ModelConfig& model) {
  MoEConfig c;
  c.hidden_size = model.hidden_size;
  c.activation = model.activation;
  c.gelu_exact = model.gelu_exact;
  c.ffn_size = moe.get_int("ffn_size", model.ffn_size);
  c.top_k = moe.to_int("top_k", moe.get_int("top_k", 1));
  c.score_func = moe.get_enum("score_func", kScoreFuncNames, ScoreFunc::kSoftmax);
  c.renormalize = moe.get_bool("renormalize", false);
  c.renormalize_after_drop = moe.get_bool("renormalize_after_drop", false);
  if (c.renormalize_after_drop && !c.renormalize)
    moe.fail("renormalize_after_drop", "needs \"renormalize\": true");
  c.selection_bias = moe.get_bool("selection_bias", false);
  c.gumbel_second_expert = moe.get_bool("gumbel_second_expert", false);
  c.jitter_eps = moe.get_float("jitter_eps", 0.0f);
  c.rsample = moe.get_bool("rsample", false);
  c.capacity_factor_train = moe.get_float("capacity_factor", 1.0f);
  c.capacity_factor_eval = moe.get_float("eval_capacity_factor", c.capacity_factor_train);
  c.min_capacity = moe.get_int("min_capacity", 4);
  c.drop_policy = moe.get_enum("drop_policy", kDropPolicyNames, DropPolicy::kPosition);
  c.dropless = moe.get_bool("dropless", false);
  c.aux_loss_type = moe.get_enum("aux_loss_type", kAuxLossTypeNames, AuxLossType::kDeepSpeed);
  c.aux_loss_coef = moe.get_float("aux_loss_coef", 0.01f);
  c.z_loss_coef = moe.get_float("z_loss_coef", 0.0f);
  c.residual = moe.get_bool("residual", false);
  c.residual_ffn_size = moe.get_int("residual_ffn_size", 0);
  c.shared_ffn_size = moe.get_int("shared_ffn_size", 0);
  c.shared_gate = moe.get_bool("shared_gate", false);
  return c;
}

}  // namespace

ModelConfig ModelConfig::from_json(const JsonReader& m) {
  ModelConfig c;
  c.vocab_size = m.get_int("vocab_size");
  c.hidden_size = m.get_int("hidden_size");
  c.num_layers = m.get_int("num_layers");
  c.num_heads = m.get_int("num_heads");
  c.num_kv_heads = m.get_int("num_kv_heads", c.num_heads);
  if (!m.has("head_dim") && c.num_heads > 0)
    MOEX_CHECK(c.hidden_size % c.num_heads == 0, m.where("hidden_size"), " (", c.hidden_size,
               ") is not a multiple of model.num_heads (", c.num_heads,
               "); set model.head_dim to choose the head size");
  c.head_dim = m.get_int("head_dim", c.num_heads > 0 ? c.hidden_size / c.num_heads : 0);
  // The default 4 * hidden_size must not overflow; an absurd hidden_size fails validate().
  const int64_t default_ffn =
      c.hidden_size <= std::numeric_limits<int64_t>::max() / 4 ? 4 * c.hidden_size : 0;
  c.ffn_size = m.get_int("ffn_size", default_ffn);
  c.max_seq_len = m.get_int("max_seq_len");
  c.positions = m.get_enum("positions", kPositionNames, PositionType::kRope);
  c.rope_theta = m.get_double("rope_theta", 10000.0);
  c.norm = m.get_enum("norm", kNormNames, NormType::kRMSNorm);
  c.norm_eps = m.get_double("norm_eps", 1e-5);
  c.activation = m.get_enum("activation", kActivationNames, ExpertActivation::kSwiGLU);
  c.gelu_exact = m.get_bool("gelu_exact", false);
  if (c.gelu_exact && c.activation != ExpertActivation::kGelu)
    m.fail("gelu_exact", "needs \"activation\": \"gelu\"");
  c.tie_embeddings = m.get_bool("tie_embeddings", false);
  c.qkv_bias = m.get_bool("qkv_bias", false);
  c.qk_norm = m.get_enum("qk_norm", kQKNormNames, QKNorm::kNone);
  c.init_std = m.get_float("init_std", 0.02f);
  c.bos_id = m.get_int("bos_id", -1);
  c.eos_id = m.get_int("eos_id", -1);

  // Checked before the per-layer table is allocated (validate() holds the same limit).
  if (c.num_layers > ModelConfig::kMaxLayers)
    m.fail("num_layers", "is " + std::to_string(c.num_layers) + "; at most " +
                             std::to_string(ModelConfig::kMaxLayers) + " are supported");
  // MoE every `layer_freq`-th block (block i is MoE when (i + 1) % layer_freq == 0, as in
  // DeepSpeed-MoE's expert interval and HF's decoder_sparse_step), except `dense_layers`.
  c.layers.assign(static_cast<size_t>(std::max<int64_t>(c.num_layers, 0)), LayerSpec{});
  if (m.has("moe")) {
    const JsonReader moe = m.child("moe");
    const int64_t freq = moe.get_int("layer_freq", 1);
    if (freq < 1) moe.fail("layer_freq", "must be >= 1");
    const MoEConfig base = parse_moe(moe, c);
    std::vector<bool> is_moe(c.layers.size(), false);
    for (size_t i = 0; i < c.layers.size(); ++i) is_moe[i] = (i + 1) % freq == 0;
    for (int64_t i : moe.get_int_array("dense_layers")) {  // HF Qwen2-MoE's mlp_only_layers
      if (i < 0 || i >= c.num_layers)
        moe.fail("dense_layers",
                 "names layer " + std::to_string(i) + " of " + std::to_string(c.num_layers));
      is_moe[static_cast<size_t>(i)] = false;
    }
    int num_moe = 0;
    for (bool b : is_moe) num_moe += b;
    // An integer, or one count per MoE layer (a pyramid for PR-MoE).
    const std::vector<int64_t> experts =
        moe.get_int_list("num_experts", static_cast<size_t>(num_moe), 0);
    int j = 0;
    for (size_t i = 0; i < c.layers.size(); ++i) {
      if (!is_moe[i]) continue;
      c.layers[i].moe = true;
      c.layers[i].moe_config = base;
      c.layers[i].moe_config.num_experts = moe.to_int("num_experts", experts[j++]);
    }
    moe.finish();
  }
  if (c.bos_id < -1 || c.bos_id >= c.vocab_size)
    m.fail("bos_id", "is " + std::to_string(c.bos_id) + ", outside the vocabulary of " +
                         std::to_string(c.vocab_size) + " (-1: none)");
  if (c.eos_id < -1 || c.eos_id >= c.vocab_size)
    m.fail("eos_id", "is " + std::to_string(c.eos_id) + ", outside the vocabulary of " +
                         std::to_string(c.vocab_size) + " (-1: none)");
  m.finish();
  try {
    c.validate(m.path());
  } catch (const Error& e) {  // name the file: validate() names only the field
    MOEX_THROW(m.source(), ": ", e.message());
  }
  return c;
}

nlohmann::json ModelConfig::to_json() const {
  nlohmann::json j;
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["num_layers"] = num_layers;
  j["num_heads"] = num_heads;
  j["num_kv_heads"] = num_kv_heads;
  j["head_dim"] = head_dim;
  j["ffn_size"] = ffn_size;
  j["max_seq_len"] = max_seq_len;
  j["positions"] = enum_name(kPositionNames, positions);
  j["rope_theta"] = rope_theta;
  j["norm"] = enum_name(kNormNames, norm);
  j["norm_eps"] = norm_eps;
  j["activation"] = enum_name(kActivationNames, activation);
  j["gelu_exact"] = gelu_exact;
  j["tie_embeddings"] = tie_embeddings;
  j["qkv_bias"] = qkv_bias;
  j["qk_norm"] = enum_name(kQKNormNames, qk_norm);
  j["init_std"] = init_std;
  j["bos_id"] = bos_id;
  j["eos_id"] = eos_id;
  // from_json gives every MoE layer one set of options (only the expert count may differ) and
  // places them with layer_freq and dense_layers: layer_freq 1 with every dense block listed
  // places any pattern.
  const LayerSpec* first = nullptr;
  nlohmann::json dense = nlohmann::json::array(), experts = nlohmann::json::array();
  for (size_t i = 0; i < layers.size(); ++i) {
    const LayerSpec& l = layers[i];
    if (!l.moe) {
      dense.push_back(i);
      continue;
    }
    const MoEConfig& m = l.moe_config;
    const std::string layer = "layer " + std::to_string(i);
    MOEX_CHECK(m.hidden_size == hidden_size && m.activation == activation &&
                   m.gelu_exact == gelu_exact,
               "model config: the MoE ", layer,
               " has another hidden size or activation than the model's; moex JSON gives every "
               "MoE layer the model's");
    if (first == nullptr) first = &l;
    const nlohmann::json a = first->moe_config.to_json(), b = m.to_json();
    for (auto it = a.begin(); it != a.end(); ++it)
      MOEX_CHECK(b.at(it.key()) == it.value(), "model config: the MoE ", layer, "'s ", it.key(),
                 " (", b.at(it.key()).dump(), ") differs from the first MoE layer's (",
                 it.value().dump(), "); moex JSON gives all MoE layers one value of it");
    experts.push_back(m.num_experts);
  }
  if (first == nullptr) return j;  // no "moe" object: every block dense
  nlohmann::json moe = first->moe_config.to_json();
  moe["layer_freq"] = 1;
  moe["dense_layers"] = dense;
  bool same = true;
  for (const auto& e : experts) same = same && e == experts.front();
  moe["num_experts"] = same ? experts.front() : experts;
  j["moe"] = moe;
  return j;
}

void ModelConfig::validate(const std::string& section) const {
  const std::string s = section.empty() ? "" : section + ".";
  MOEX_CHECK(vocab_size > 0, s, "vocab_size must be > 0 (got ", vocab_size, ")");
  MOEX_CHECK(hidden_size > 0, s, "hidden_size must be > 0 (got ", hidden_size, ")");
  MOEX_CHECK(num_layers > 0, s, "num_layers must be > 0 (got ", num_layers, ")");
  MOEX_CHECK(num_heads > 0, s, "num_heads must be > 0 (got ", num_heads, ")");
  MOEX_CHECK(num_kv_heads > 0 && num_heads % num_kv_heads == 0, s, "num_kv_heads (",
             num_kv_heads, ") must divide ", s, "num_heads (", num_heads, ")");
  MOEX_CHECK(head_dim > 0, s, "head_dim must be > 0 (got ", head_dim, ")");
  MOEX_CHECK(positions != PositionType::kRope || head_dim % 2 == 0, s, "head_dim (", head_dim,
             ") must be even for rope");
  MOEX_CHECK(max_seq_len > 0, s, "max_seq_len must be > 0 (got ", max_seq_len, ")");
  MOEX_CHECK(ffn_size > 0, s, "ffn_size must be > 0 (got ", ffn_size, ")");
  MOEX_CHECK(norm_eps > 0, s, "norm_eps must be > 0");
  MOEX_CHECK(num_layers <= ModelConfig::kMaxLayers, s, "num_layers is ", num_layers,
             "; at most ", ModelConfig::kMaxLayers, " are supported");
  MOEX_CHECK(positions != PositionType::kRope || (rope_theta > 0 && std::isfinite(rope_theta)),
             s, "rope_theta must be > 0 (got ", rope_theta, ")");
  MOEX_CHECK(init_std >= 0 && std::isfinite(init_std), s, "init_std must be >= 0 (got ",
             init_std, ")");
  MOEX_CHECK(vocab_size <= std::numeric_limits<int32_t>::max(), s, "vocab_size (", vocab_size,
             ") exceeds the int32 token ids");
  for (const LayerSpec& layer : layers)
    if (layer.moe) layer.moe_config.validate(s + "moe");
  // An upper bound of num_parameters() in long double: a size field of a corrupted config must
  // not overflow the int64_t counts (or allocate) further on.
  const long double d = hidden_size, qd = static_cast<long double>(num_heads) * head_dim,
                    kd = static_cast<long double>(num_kv_heads) * head_dim;
  long double total = 2.0L * vocab_size * d + static_cast<long double>(max_seq_len) * d + 2 * d;
  for (const LayerSpec& l : layers) {
    total += d * (qd + 2 * kd) + qd * d + 2 * (qd + 2 * kd) + 2 * head_dim + 4 * d;
    long double ffn = ffn_size;
    if (l.moe) {
      const MoEConfig& m = l.moe_config;
      ffn = static_cast<long double>(m.num_experts) * m.ffn_size + m.ffn_size +
            m.residual_ffn_size + m.shared_ffn_size;
      total += static_cast<long double>(m.num_experts) * (d + 1) + 3 * d;
    }
    total += 3 * d * ffn;
  }
  MOEX_CHECK(total <= kMaxParameters, "model: the sizes describe about ",
             static_cast<double>(total),
             " parameters, more than 2^50 (a size field is implausibly large)");
}

int ModelConfig::num_moe_layers() const {
  int n = 0;
  for (const LayerSpec& l : layers) n += l.moe;
  return n;
}

// Counted from the config alone (no allocation), so it also describes models too large to build
// here. It must equal the elements Model declares; tests/unit/model_configs_test.cpp checks that.
int64_t ModelConfig::num_parameters() const {
  const int64_t d = hidden_size, qd = num_heads * head_dim, kd = num_kv_heads * head_dim;
  const int64_t matrices = activation == ExpertActivation::kSwiGLU ? 3 : 2;
  const auto norm_params = [&](int64_t dim) {
    return norm == NormType::kLayerNorm ? 2 * dim : dim;
  };
  int64_t attn = d * (qd + 2 * kd) + qd * d;  // q, k, v and o projections
  if (qkv_bias) attn += qd + 2 * kd;
  if (qk_norm == QKNorm::kPerHead) attn += 2 * head_dim;  // RMSNorm weights, no bias
  if (qk_norm == QKNorm::kFull) attn += qd + kd;

  int64_t total = vocab_size * d * (tie_embeddings ? 1 : 2) + norm_params(d);  // + final norm
  if (positions == PositionType::kLearned) total += max_seq_len * d;
  for (const LayerSpec& l : layers) {
    total += attn + 2 * norm_params(d);
    if (!l.moe) {
      total += matrices * d * ffn_size;
      continue;
    }
    const MoEConfig& m = l.moe_config;
    const int64_t e = m.num_experts;
    total += e * d + e * matrices * d * m.ffn_size;  // router and experts
    if (m.selection_bias) total += e;
    if (m.residual)  // the residual MLP and its 2-way mixing coefficient
      total += matrices * d * (m.residual_ffn_size ? m.residual_ffn_size : m.ffn_size) + 2 * d;
    if (m.shared_ffn_size) total += matrices * d * m.shared_ffn_size + (m.shared_gate ? d : 0);
  }
  return total;
}

int64_t ModelConfig::active_matmul_parameters() const {
  const int64_t d = hidden_size, qd = num_heads * head_dim, kd = num_kv_heads * head_dim;
  const int64_t matrices = activation == ExpertActivation::kSwiGLU ? 3 : 2;
  int64_t total = vocab_size * d;  // the LM head
  for (const LayerSpec& l : layers) {
    total += d * (qd + 2 * kd) + qd * d;
    if (!l.moe) {
      total += matrices * d * ffn_size;
      continue;
    }
    const MoEConfig& m = l.moe_config;
    total += m.num_experts * d + m.top_k * matrices * d * m.ffn_size;
    if (m.residual)
      total += matrices * d * (m.residual_ffn_size ? m.residual_ffn_size : m.ffn_size) + 2 * d;
    if (m.shared_ffn_size) total += matrices * d * m.shared_ffn_size + (m.shared_gate ? d : 0);
  }
  return total;
}

}  // namespace moex
