#include "moe/dispatch_plan.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"
#include "core/rng.h"
#include "moe/router.h"

namespace moex::moe {

template <typename T>
void build_dispatch_plan(const int32_t* topk_idx, const T* route_score, int64_t num_tokens,
                         int64_t num_experts, int top_k, const DispatchParams& params,
                         DispatchPlan* plan) {
  MOEX_CHECK(num_tokens >= 0, "build_dispatch_plan: num_tokens must be >= 0, got ", num_tokens);
  MOEX_CHECK(num_experts > 0, "build_dispatch_plan: num_experts must be > 0, got ", num_experts);
  MOEX_CHECK(top_k >= 1 && top_k <= num_experts, "build_dispatch_plan: top_k must be in [1, ",
             num_experts, "], got ", top_k);
  MOEX_CHECK(params.dropless || params.capacity >= 0,
             "build_dispatch_plan: capacity must be >= 0, got ", params.capacity);
  MOEX_CHECK(params.dropless || params.policy != DropPolicy::kProbs || route_score != nullptr,
             "build_dispatch_plan: the probs policy needs route_score");
  const int64_t num_routes = num_tokens * top_k;
  DispatchPlan& p = *plan;
  p.num_tokens = num_tokens;
  p.num_experts = num_experts;
  p.top_k = top_k;
  p.padded = !params.dropless;
  p.expert.assign(topk_idx, topk_idx + num_routes);
  p.slot.assign(num_routes, -1);
  p.row.assign(num_routes, -1);
  p.load.assign(num_experts, 0);
  p.counts.assign(num_experts, 0);
  p.offsets.assign(num_experts + 1, 0);

  for (int64_t r = 0; r < num_routes; ++r) {
    const int32_t e = topk_idx[r];
    MOEX_CHECK(e >= 0 && e < num_experts, "build_dispatch_plan: topk_idx[", r, "] = ", e,
               " is not an expert");
    ++p.load[e];
  }
  p.capacity = params.dropless ? (num_experts ? *std::max_element(p.load.begin(), p.load.end()) : 0)
                               : params.capacity;
  const int64_t capacity = p.capacity;

  // Position order: choice-major, then token order.
  auto position_order = [&](auto&& visit) {
    for (int j = 0; j < top_k; ++j) {
      for (int64_t t = 0; t < num_tokens; ++t) visit(t * top_k + j);
    }
  };

  if (params.dropless || params.policy == DropPolicy::kPosition) {
    std::vector<int64_t> fill(num_experts, 0);
    position_order([&](int64_t r) {
      const int32_t e = topk_idx[r];
      const int64_t pos = fill[e]++;
      if (pos < capacity) p.slot[r] = static_cast<int32_t>(pos);
    });
  } else {
    // Rank each expert's routes by a key, keep the best C, then give slots in token order.
    std::vector<std::vector<int64_t>> routes(num_experts);
    position_order([&](int64_t r) { routes[topk_idx[r]].push_back(r); });
    std::vector<double> key(num_routes);
    if (params.policy == DropPolicy::kProbs) {
      for (int64_t r = 0; r < num_routes; ++r) key[r] = static_cast<double>(route_score[r]);
    } else {
      const uint64_t stream = moe_rng_offset(params.offset, MoERngUse::kRts);
      for (int64_t r = 0; r < num_routes; ++r)
        key[r] = philox_uniform(params.seed, stream, static_cast<uint64_t>(r));
    }
    std::vector<uint8_t> keep(num_routes, 0);
    for (int64_t e = 0; e < num_experts; ++e) {
      auto& list = routes[e];
      if (static_cast<int64_t>(list.size()) > capacity) {
        std::stable_sort(list.begin(), list.end(),
                         [&](int64_t a, int64_t b) { return key[a] > key[b]; });
        list.resize(capacity);
      }
      for (int64_t r : list) keep[r] = 1;
    }
    std::vector<int64_t> fill(num_experts, 0);
    for (int64_t r = 0; r < num_routes;
         ++r) {  // token order (r = t*k + j, one expert per token at most once)
      if (keep[r]) p.slot[r] = static_cast<int32_t>(fill[topk_idx[r]]++);
    }
  }

  p.num_dropped = 0;
  for (int64_t r = 0; r < num_routes; ++r) {
    if (p.slot[r] >= 0) {
      ++p.counts[topk_idx[r]];
    } else {
      ++p.num_dropped;
    }
  }
  for (int64_t e = 0; e < num_experts; ++e) {
    p.offsets[e + 1] = p.offsets[e] + (p.padded ? capacity : p.counts[e]);
  }
  p.gather.assign(p.num_rows(), -1);
  for (int64_t r = 0; r < num_routes; ++r) {
    if (p.slot[r] < 0) continue;
    p.row[r] = static_cast<int32_t>(p.offsets[topk_idx[r]] + p.slot[r]);
    p.gather[p.row[r]] = static_cast<int32_t>(r);
  }
}

template void build_dispatch_plan<float>(const int32_t*, const float*, int64_t, int64_t, int,
                                         const DispatchParams&, DispatchPlan*);
template void build_dispatch_plan<double>(const int32_t*, const double*, int64_t, int64_t, int,
                                          const DispatchParams&, DispatchPlan*);

}  // namespace moex::moe
