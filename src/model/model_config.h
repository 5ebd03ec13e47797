// The model's shape and options, from a moex JSON config ("model" section) or a Hugging Face
// config.json (src/model/hf_config.*). One LayerSpec per block says whether its FFN is dense or
// MoE.
#pragma once

#include <string>
#include <vector>

#include "core/json_reader.h"
#include "moe/moe_config.h"

namespace moex {

enum class NormType { kLayerNorm, kRMSNorm };
enum class PositionType { kRope, kLearned };
enum class QKNorm {
  kNone,
  kPerHead,
  kFull
};  // Qwen3-MoE normalizes each head; OLMoE the whole q/k

// The names configs give these (JsonReader::get_enum reads them, enum_name writes them).
inline constexpr EnumName<NormType> kNormNames[] = {{NormType::kRMSNorm, "rmsnorm"},
                                                    {NormType::kLayerNorm, "layernorm"}};
inline constexpr EnumName<PositionType> kPositionNames[] = {{PositionType::kRope, "rope"},
                                                            {PositionType::kLearned, "learned"}};
inline constexpr EnumName<QKNorm> kQKNormNames[] = {
    {QKNorm::kNone, "none"}, {QKNorm::kPerHead, "per_head"}, {QKNorm::kFull, "full"}};

struct LayerSpec {
  bool moe = false;
  MoEConfig moe_config;  // valid when moe
};

struct ModelConfig {
  std::string architecture = "moex";  // or the HF architecture it was read from
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;  // d
  int64_t num_layers = 0;
  int64_t num_heads = 0;     // H
  int64_t num_kv_heads = 0;  // Hkv, divides H (GQA)
  int64_t head_dim = 0;      // Dh, default d / H
  int64_t ffn_size = 0;      // dense FFN width
  int64_t max_seq_len = 0;
  PositionType positions = PositionType::kRope;
  double rope_theta = 10000.0;
  NormType norm = NormType::kRMSNorm;
  double norm_eps = 1e-5;
  ExpertActivation activation = ExpertActivation::kSwiGLU;  // dense FFNs and experts alike
  bool gelu_exact = false;  // GELU only: erf form; false: the tanh approximation (GPT-2, Megatron)
  bool tie_embeddings = false;
  bool qkv_bias = false;  // Qwen2-MoE
  QKNorm qk_norm = QKNorm::kNone;
  float init_std = 0.02f;
  int64_t bos_id = -1, eos_id = -1;
  // More layers than any model has; also bounds the per-layer table a corrupted config allocates.
  static constexpr int64_t kMaxLayers = int64_t{1} << 16;
  std::vector<LayerSpec> layers;

  // The "model" object of a moex config. Unknown fields are errors naming the file and field.
  static ModelConfig from_json(const JsonReader& model);
  // The "model" object from_json reads back into this config: every field it reads, written out
  // (defaults too), so from_json(to_json()) builds the same model. `architecture` is not a field
  // of it (from_json gives "moex"; it changes no number). A config from_json cannot express
  // (MoE layers whose options differ in more than num_experts, or whose hidden size or activation
  // is not the model's) is an Error naming what differs.
  nlohmann::json to_json() const;
  // Errors name the field under `section`: "model" in a training config, "moex_model" in a saved
  // model's config.json, "" at a file's top level.
  void validate(const std::string& section = "model") const;
  int num_moe_layers() const;
  // Weights one token multiplies through (attention projections, the dense or the top-k expert
  // MLPs with their router, residual and shared parts, the LM head): 2x this is its forward
  // matmul FLOPs, the "6N" of the model-FLOPs count benchmarks report MFU with.
  int64_t active_matmul_parameters() const;
  int64_t num_parameters() const;
};

}  // namespace moex
