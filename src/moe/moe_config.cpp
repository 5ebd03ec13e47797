#include "moe/moe_config.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace moex {

void MoEConfig::validate() const {
  MOEX_CHECK(hidden_size > 0, "model.moe.hidden_size must be > 0, got ", hidden_size);
  MOEX_CHECK(ffn_size > 0, "model.moe.ffn_size must be > 0, got ", ffn_size);
  MOEX_CHECK(num_experts > 0, "model.moe.num_experts must be > 0, got ", num_experts);
  MOEX_CHECK(top_k >= 1, "model.moe.top_k must be >= 1, got ", top_k);
  MOEX_CHECK(top_k <= num_experts, "model.moe.top_k (", top_k, ") must be <= num_experts (",
             num_experts, ")");
  MOEX_CHECK(capacity_factor_train > 0 && std::isfinite(capacity_factor_train),
             "model.moe.capacity_factor must be > 0, got ", capacity_factor_train);
  MOEX_CHECK(capacity_factor_eval > 0 && std::isfinite(capacity_factor_eval),
             "model.moe.eval_capacity_factor must be > 0, got ", capacity_factor_eval);
  MOEX_CHECK(min_capacity >= 0, "model.moe.min_capacity must be >= 0, got ", min_capacity);
  MOEX_CHECK(jitter_eps >= 0 && jitter_eps < 1, "model.moe.jitter_eps must be in [0, 1), got ",
             jitter_eps);
  MOEX_CHECK(!rsample || top_k == 1,
             "model.moe.rsample needs top_k == 1 (DeepSpeed's top-1 RSample), got top_k=", top_k);
  MOEX_CHECK(!gumbel_second_expert || top_k == 2,
             "model.moe.gumbel_second_expert needs top_k == 2, got top_k=", top_k);
  MOEX_CHECK(!gumbel_second_expert || score_func == ScoreFunc::kSoftmax,
             "model.moe.gumbel_second_expert needs score_func softmax");
  MOEX_CHECK(!rsample || score_func == ScoreFunc::kSoftmax,
             "model.moe.rsample needs score_func softmax");
  MOEX_CHECK(!selection_bias || score_func == ScoreFunc::kSigmoid,
             "model.moe.selection_bias needs score_func sigmoid");
  MOEX_CHECK(aux_loss_coef >= 0, "model.moe.aux_loss_coef must be >= 0, got ", aux_loss_coef);
  MOEX_CHECK(z_loss_coef >= 0, "model.moe.z_loss_coef must be >= 0, got ", z_loss_coef);
  MOEX_CHECK(residual_ffn_size >= 0, "model.moe.residual_ffn_size must be >= 0, got ",
             residual_ffn_size);
  MOEX_CHECK(shared_ffn_size >= 0, "model.moe.shared_ffn_size must be >= 0, got ", shared_ffn_size);
  MOEX_CHECK(!shared_gate || shared_ffn_size > 0,
             "model.moe.shared_gate needs shared_ffn_size > 0");
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
