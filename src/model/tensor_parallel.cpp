#include "model/tensor_parallel.h"

#include <algorithm>

#include "core/error.h"
#include "core/rng.h"
#include "ops/collective.h"
#include "ops/elementwise.h"

namespace moex::model {

int64_t TensorParallel::part(int64_t n) const {
  MOEX_CHECK(n % size() == 0, "tensor parallelism: ", n, " does not split over ", size(), " ranks");
  return n / size();
}

TensorParallelMisfit tensor_parallel_misfit(const ModelConfig& model, int64_t tp,
                                            bool expert_slicing, bool on_gpu) {
  const std::string tps = std::to_string(tp);
  const bool dense = std::any_of(model.layers.begin(), model.layers.end(),
                                 [](const LayerSpec& l) { return !l.moe; });
  // The dense FFN's width only where a layer has one.
  const int64_t ffn = dense ? model.ffn_size : tp;
  for (const auto& [n, what] :
       {std::pair{model.num_heads, "model.num_heads"},
        std::pair{model.num_kv_heads, "model.num_kv_heads"}, std::pair{ffn, "model.ffn_size"},
        std::pair{model.vocab_size, "model.vocab_size"}})
    if (n % tp != 0)
      return {"tp",
              "is " + tps + ", which does not divide " + what + " (" + std::to_string(n) + ")"};
  if (tp > 1 && model.qk_norm == QKNorm::kFull)
    return {"tp",
            "must be 1 for a q/k norm over the whole projection (model.qk_norm \"full\"): it "
            "needs every head"};
  for (size_t i = 0; expert_slicing && i < model.layers.size(); ++i) {
    const int64_t f = model.layers[i].moe_config.ffn_size;
    if (!model.layers[i].moe) continue;
    if (f % tp != 0)
      return {"expert_slicing", "splits each expert's ffn_size over tp = " + tps +
                                    ", which does not divide layer " + std::to_string(i) + "'s (" +
                                    std::to_string(f) + ")"};
    if (on_gpu && (f / tp) % 8 != 0)
      return {"expert_slicing",
              "on the GPU needs each rank's slice of an expert a multiple of 8 "
              "wide; layer " +
                  std::to_string(i) + "'s ffn_size " + std::to_string(f) + " / tp " + tps + " is " +
                  std::to_string(f / tp)};
  }
  return {};
}

dist::DeviceGroup& TensorParallel::gpu_group() const {
  MOEX_CHECK(device_group != nullptr,
             "tensor parallelism on a GPU needs the tp group's GPU communicator");
  return *device_group;
}

void TensorParallel::all_reduce(const Tensor& t) const {
  if (!active()) return;
  if (t.device().is_cuda()) {
    ops::all_reduce_sum(t, gpu_group());
    return;
  }
  MOEX_CHECK(t.dtype() == DType::kF32,
             "tensor parallelism: the all-reduce takes f32 host tensors, "
             "got ",
             dtype_name(t.dtype()), " ", t.shape().str());
  group->all_reduce_sum(t.data<float>(), t.numel());
}

void TensorParallel::all_gather(const Tensor& t, const Tensor& all) const {
  MOEX_CHECK(t.device() == all.device() && t.dtype() == DType::kF32 && all.dtype() == DType::kF32 &&
                 all.numel() == t.numel() * size(),
             "tensor parallelism: all_gather takes f32 tensors on one device, [", size(), ", n]");
  if (!active()) {
    ops::copy(t, all);
    return;
  }
  if (t.device().is_cuda()) {
    ops::all_gather(t, all, gpu_group());
    return;
  }
  group->all_gather(t.data<float>(), all.data<float>(), t.numel());
}

void fill_normal(float* p, int64_t n, float std, uint64_t seed, uint64_t offset, int64_t first) {
  // Element i is draw first + i of a counter-based stream, so chunks fill in parallel with the
  // numbers of one serial pass (a model's experts are billions of them).
  constexpr int64_t kChunk = int64_t{1} << 16;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kChunk, end = std::min(n, begin + kChunk);
    Rng rng(seed, offset);
    rng.set_state(offset, 2 * static_cast<uint64_t>(first + begin));  // a normal takes two draws
    for (int64_t i = begin; i < end; ++i) p[i] = std * rng.normal();
  }
}

void fill_normal_part(const Tensor& local, int64_t rows, int64_t cols, int split_dim,
                      const TensorParallel& tp, float std, uint64_t seed, uint64_t offset,
                      int64_t first) {
  const int64_t local_rows = split_dim == 0 ? tp.part(rows) : rows;
  const int64_t local_cols = split_dim == 1 ? tp.part(cols) : cols;
  MOEX_CHECK(local.numel() == local_rows * local_cols, "fill_normal_part: ", local.shape().str(),
             " is not a part of a [", rows, ", ", cols, "] matrix");
  const int64_t row0 = split_dim == 0 ? tp.rank() * local_rows : 0;
  const int64_t col0 = split_dim == 1 ? tp.rank() * local_cols : 0;
  float* p = local.data<float>();
  if (local_cols == cols) {  // one run of whole rows
    fill_normal(p, local.numel(), std, seed, offset, first + row0 * cols);
    return;
  }
  for (int64_t i = 0; i < local_rows; ++i)
    fill_normal(p + i * local_cols, local_cols, std, seed, offset,
                first + (row0 + i) * cols + col0);
}

}  // namespace moex::model
