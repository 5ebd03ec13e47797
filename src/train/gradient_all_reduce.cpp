#include "train/gradient_all_reduce.h"

#include "core/error.h"
#include "model/model.h"

namespace moex::train {

GradientAllReduce::GradientAllReduce(const model::Model& model, const DataParallelGroups& groups,
                                     bool detach)
    : groups_(groups),
      detach_(detach),
      one_group_(groups.edp == nullptr || groups.edp == groups.dp) {
  MOEX_CHECK(groups_.dp != nullptr, "GradientAllReduce needs the data-parallel group");
  // A streamed bucket's storage is reused as soon as the sink returns: no in-place sum there.
  MOEX_CHECK(!model.streams_gradients(),
             "GradientAllReduce sums a whole gradient buffer; streamed gradients go to ZeRO");
  if (one_group_) {
    groups_.edp = groups_.dp;
    groups_.gpu_edp = groups_.gpu_dp;
  }
  const ParamBuffer& layout = model.params();
  for (const model::EntryRange& bucket : model.gradient_buckets()) {
    std::vector<Run>& runs = runs_.emplace_back();
    const int64_t base = bucket.first <= bucket.last ? layout.offset(bucket.first) : 0;
    for (int i = bucket.first; i <= bucket.last; ++i) {
      const bool expert = model.is_expert_param(i);
      const int64_t begin = layout.offset(i) - base, end = begin + layout.range_elements(i, i);
      if (!runs.empty() && runs.back().expert == expert)
        runs.back().end = end;  // the padding between neighbours goes with them
      else
        runs.push_back({begin, end, expert});
    }
  }
}

void GradientAllReduce::reduce(const Tensor& grads, bool expert, bool detach) {
  dist::Communicator& group = expert ? *groups_.edp : *groups_.dp;
  if (group.size() == 1) return;
  if (grads.device().is_cpu()) {
    group.all_reduce_sum(grads.data<float>(), grads.numel());
    return;
  }
  dist::DeviceGroup* gpu = expert ? groups_.gpu_edp : groups_.gpu_dp;
  MOEX_CHECK(gpu != nullptr, "GradientAllReduce: GPU gradients need the GPU groups");
  if (detach)
    pending_.push_back(ops::all_reduce_sum_detached(grads, *gpu));
  else
    ops::all_reduce_sum(grads, *gpu);
}

void GradientAllReduce::reduce_all(model::Model& model) {
  const Tensor& flat = model.grads().flat();          // unwritten entries read as zeros
  if (one_group_) return reduce(flat, false, false);  // one call for the whole buffer
  const std::vector<model::EntryRange>& buckets = model.gradient_buckets();
  for (size_t b = 0; b < buckets.size(); ++b) {
    if (buckets[b].first > buckets[b].last) continue;
    const int64_t base = model.params().offset(buckets[b].first);
    for (const Run& run : runs_[b])
      reduce(flat.slice(base + run.begin, base + run.end), run.expert, false);
  }
}

void GradientAllReduce::take(int bucket, const Tensor& grads) {
  if (one_group_) return reduce(grads, false, detach_);  // one call for the bucket
  for (const Run& run : runs_.at(static_cast<size_t>(bucket)))
    reduce(grads.slice(run.begin, run.end), run.expert, detach_);
}

void GradientAllReduce::wait() {
  for (const ops::PendingCollective& p : pending_) ops::wait(p);
  pending_.clear();
}

}  // namespace moex::train
