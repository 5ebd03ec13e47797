// Every option of the MoE layer (docs/architecture.md §MoE layer; the JSON fields in
// docs/config.md). The CPU layer (src/moe/) and the GPU layer (src/cuda/) implement exactly these
// semantics; the CPU one is the oracle.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "core/json_reader.h"

namespace moex {

enum class ScoreFunc {
  kSoftmax,
  kSigmoid
};  // softmax over all experts then top-k; or sigmoid scores
enum class DropPolicy { kPosition, kProbs, kRts };  // which routes an over-full expert keeps
enum class AuxLossType { kNone, kDeepSpeed, kMixtral };
enum class ExpertActivation { kGelu, kSwiGLU };

// The names configs give these (JsonReader::get_enum reads them, enum_name writes them).
inline constexpr EnumName<ScoreFunc> kScoreFuncNames[] = {{ScoreFunc::kSoftmax, "softmax"},
                                                          {ScoreFunc::kSigmoid, "sigmoid"}};
inline constexpr EnumName<DropPolicy> kDropPolicyNames[] = {
    {DropPolicy::kPosition, "position"}, {DropPolicy::kProbs, "probs"}, {DropPolicy::kRts, "rts"}};
inline constexpr EnumName<AuxLossType> kAuxLossTypeNames[] = {
    {AuxLossType::kDeepSpeed, "deepspeed"},
    {AuxLossType::kMixtral, "mixtral"},
    {AuxLossType::kNone, "none"}};
inline constexpr EnumName<ExpertActivation> kActivationNames[] = {
    {ExpertActivation::kSwiGLU, "swiglu"}, {ExpertActivation::kGelu, "gelu"}};

struct MoEConfig {
  int64_t hidden_size = 0;  // d
  int64_t ffn_size = 0;     // F, per expert
  int num_experts = 0;      // E
  int top_k = 1;            // k
  ExpertActivation activation = ExpertActivation::kGelu;
  bool gelu_exact = false;  // erf GELU; false: the tanh approximation DeepSpeed/Megatron GPT use

  // --- scores and selection ---
  ScoreFunc score_func = ScoreFunc::kSoftmax;
  bool renormalize = false;  // divide the k kept weights by their sum
  // With renormalize: sum over the routes that survived capacity (DeepSpeed's top2/topk gating)
  // instead of over all k selected ones (Mixtral, Qwen-MoE; nothing is dropped there anyway).
  bool renormalize_after_drop = false;
  bool selection_bias =
      false;  // sigmoid only: per-expert bias added for selection, not for weights
  bool gumbel_second_expert =
      false;                // top-2: second expert by Gumbel-max over the rest (DeepSpeed default)
  float jitter_eps = 0.0f;  // training: x *= U(1-eps, 1+eps) before the router
  bool rsample = false;     // training, top-1: Gumbel noise on the logits for selection only

  // --- capacity ---
  float capacity_factor_train = 1.0f;
  float capacity_factor_eval = 1.0f;
  int64_t min_capacity = 4;
  DropPolicy drop_policy = DropPolicy::kPosition;
  bool dropless = false;  // C = the largest expert load; nothing dropped

  // --- auxiliary losses (computed before dropping) ---
  AuxLossType aux_loss_type =
      AuxLossType::kDeepSpeed;  // DeepSpeed picks the top-1/top-2/top-k form by k
  float aux_loss_coef = 0.0f;
  float z_loss_coef = 0.0f;

  // --- residual MoE (PR-MoE) and shared experts ---
  bool residual = false;          // y = moe(x)*c0 + mlp(x)*c1, c = softmax(x Wc)
  int64_t residual_ffn_size = 0;  // 0: same as ffn_size
  int64_t shared_ffn_size = 0;    // > 0 adds a shared expert: y += shared_mlp(x)
  bool shared_gate = false;       // scale the shared expert by sigmoid(x . ws)

  // Throws moex::Error naming the field when an option is out of range (k > E, capacity factor <=
  // 0, ...).
  // Errors name fields under `section` ("model.moe" in a training config, "moex_model.moe" in a
  // saved model's config.json).
  void validate(const std::string& section = "model.moe") const;
  // The layer's own options as the fields of a moex config's "moe" object (what
  // ModelConfig::from_json reads there). hidden_size, activation and gelu_exact are the model's
  // and num_experts is per layer: ModelConfig::to_json writes those.
  nlohmann::json to_json() const;
  // F1: rows of an expert's first projection (2F for SwiGLU: gate rows, then up rows).
  int64_t first_proj_rows(int64_t ffn) const {
    return activation == ExpertActivation::kSwiGLU ? 2 * ffn : ffn;
  }
};

// C = max(min_capacity, ceil(T / E * capacity_factor * k)); dropless capacity is decided from
// loads.
int64_t moe_capacity(int64_t num_tokens, const MoEConfig& config, bool training);

}  // namespace moex
