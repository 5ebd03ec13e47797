// Hugging Face config.json <-> ModelConfig for the MoE architectures moex reads and writes:
// MixtralForCausalLM, Qwen2MoeForCausalLM, Qwen3MoeForCausalLM and OlmoeForCausalLM
// (as transformers 5.x writes them; 4.x spellings such as a top-level rope_theta are read too).
//
// HF MoE layers are dropless, take softmax scores over all experts then top-k, renormalize the k
// kept weights when norm_topk_prob is set (Mixtral always does), and add
// router_aux_loss_coef * HF's load_balancing_loss_func (AuxLossType::kMixtral).
// An unsupported architecture or option value (sliding window in use, rope scaling, clip_qkv,
// attention dropout, biases moex has no place for, ...) is one moex::Error naming config.json
// and the field. Fields known to be irrelevant to the math (token ids, dtype, use_cache,
// output_router_logits, transformers_version, ...) are ignored explicitly; any other field is
// an error, so a new option is never silently dropped.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "model/model_config.h"

namespace moex::model {

// True for the "architectures" names listed above.
bool is_hf_architecture(const std::string& architecture);

// Reads a config.json (path to the file).
ModelConfig hf_config_from_file(const std::string& config_path);
// `text` is the file's content; `source` names it in errors.
ModelConfig hf_config_from_string(const std::string& text, const std::string& source);

// The config.json transformers expects for `config` as `architecture`; an Error naming the
// field when the model cannot be expressed in that architecture (e.g. GELU experts, LayerNorm,
// a shared expert in Mixtral).
nlohmann::json hf_config_to_json(const ModelConfig& config, const std::string& architecture);

}  // namespace moex::model
