#include "moe/moe_config.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace moex {

void MoEConfig::validate(const std::string& section) const {
  const std::string s = section.empty() ? "" : section + ".";
  MOEX_CHECK(hidden_size > 0, s, "hidden_size must be > 0, got ", hidden_size);
  MOEX_CHECK(ffn_size > 0, s, "ffn_size must be > 0, got ", ffn_size);
  MOEX_CHECK(num_experts > 0, s, "num_experts must be > 0, got ", num_experts);
  MOEX_CHECK(top_k >= 1, s, "top_k must be >= 1, got ", top_k);
  MOEX_CHECK(top_k <= num_experts, s, "top_k (", top_k, ") must be <= num_experts (",
             num_experts, ")");
  MOEX_CHECK(capacity_factor_train > 0 && std::isfinite(capacity_factor_train),
             s, "capacity_factor must be > 0, got ", capacity_factor_train);
  MOEX_CHECK(capacity_factor_eval > 0 && std::isfinite(capacity_factor_eval),
             s, "eval_capacity_factor must be > 0, got ", capacity_factor_eval);
  MOEX_CHECK(min_capacity >= 0, s, "min_capacity must be >= 0, got ", min_capacity);
  MOEX_CHECK(jitter_eps >= 0 && jitter_eps < 1, s, "jitter_eps must be in [0, 1), got ",
             jitter_eps);
  MOEX_CHECK(!rsample || top_k == 1,
             s, "rsample needs top_k == 1 (DeepSpeed's top-1 RSample), got top_k=", top_k);
  MOEX_CHECK(!gumbel_second_expert || top_k == 2,
             s, "gumbel_second_expert needs top_k == 2, got top_k=", top_k);
  MOEX_CHECK(!gumbel_second_expert || score_func == ScoreFunc::kSoftmax,
             s, "gumbel_second_expert needs score_func softmax");
  MOEX_CHECK(!rsample || score_func == ScoreFunc::kSoftmax,
             s, "rsample needs score_func softmax");
  MOEX_CHECK(!selection_bias || score_func == ScoreFunc::kSigmoid,
             s, "selection_bias needs score_func sigmoid");
  MOEX_CHECK(aux_loss_coef >= 0, s, "aux_loss_coef must be >= 0, got ", aux_loss_coef);
  MOEX_CHECK(z_loss_coef >= 0, s, "z_loss_coef must be >= 0, got ", z_loss_coef);
  MOEX_CHECK(residual_ffn_size >= 0, s, "residual_ffn_size must be >= 0, got ",
             residual_ffn_size);
  MOEX_CHECK(shared_ffn_size >= 0, s, "shared_ffn_size must be >= 0, got ", shared_ffn_size);
  MOEX_CHECK(!shared_gate || shared_ffn_size > 0,
             s, "shared_gate needs shared_ffn_size > 0");
}

nlohmann::json MoEConfig::to_json() const {
  nlohmann::json j;
  j["ffn_size"] = ffn_size;
  j["top_k"] = top_k;
  j["score_func"] = enum_name(kScoreFuncNames, score_func);
  j["renormalize"] = renormalize;
  j["renormalize_after_drop"] = renormalize_after_drop;
  j["selection_bias"] = selection_bias;
  j["gumbel_second_expert"] = gumbel_second_expert;
  j["jitter_eps"] = jitter_eps;
  j["rsample"] = rsample;
  j["capacity_factor"] = capacity_factor_train;
  j["eval_capacity_factor"] = capacity_factor_eval;
  j["min_capacity"] = min_capacity;
  j["drop_policy"] = enum_name(kDropPolicyNames, drop_policy);
  j["dropless"] = dropless;
  j["aux_loss_type"] = enum_name(kAuxLossTypeNames, aux_loss_type);
  j["aux_loss_coef"] = aux_loss_coef;
  j["z_loss_coef"] = z_loss_coef;
  j["residual"] = residual;
  j["residual_ffn_size"] = residual_ffn_size;
  j["shared_ffn_size"] = shared_ffn_size;
  j["shared_gate"] = shared_gate;
  return j;
}

int64_t moe_capacity(int64_t num_tokens, const MoEConfig& config, bool training) {
  MOEX_CHECK(num_tokens >= 0, "moe_capacity: num_tokens must be >= 0, got ", num_tokens);
  MOEX_CHECK(config.num_experts > 0, "model.moe.num_experts must be > 0, got ", config.num_experts);
  MOEX_CHECK(config.min_capacity >= 0, "model.moe.min_capacity must be >= 0, got ",
             config.min_capacity);
  const double factor = training ? config.capacity_factor_train : config.capacity_factor_eval;
  MOEX_CHECK(factor > 0, training ? "model.moe.capacity_factor" : "model.moe.eval_capacity_factor",
             " must be > 0, got ", factor);
  // DeepSpeed's _capacity: ceil(T / E * (capacity_factor * k)), in float as there.
  const double per_expert = static_cast<double>(num_tokens) / config.num_experts *
                            (static_cast<double>(factor) * config.top_k);
  const int64_t capacity = static_cast<int64_t>(std::ceil(per_expert - 1e-9 * per_expert));
  return std::max<int64_t>(config.min_capacity, capacity);
}

}  // namespace moex
