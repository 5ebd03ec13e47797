// Megatron-style tensor parallelism of one model over a tp group (docs/parallelism.md §Tensor
// parallelism). Attention is split by heads (q/k/v projections by rows, o_proj by columns), a
// dense MLP by its hidden width (gate/up by rows, down by columns), the embedding and the LM head
// by vocabulary rows. Each split layer's output is a partial sum that one all-reduce completes;
// its input gradient likewise. Norms, routers and MoE layers are whole on every rank, and the
// residual stream between layers is the same on every rank of the group.
#pragma once

#include <cstdint>
#include <string>

#include "core/tensor.h"
#include "dist/communicator.h"
#include "dist/device_group.h"
#include "model/model_config.h"

namespace moex::model {

struct TensorParallel {
  dist::Communicator* group = nullptr;  // null: this rank holds every weight
  // The same ranks on the GPU (a GPU model's activations and gradients); null on CPU ranks.
  dist::DeviceGroup* device_group = nullptr;
  // Duplicate Token Dropping in the MoE layers' expert exchanges (MoELayer::drop_duplicate_tokens).
  bool drop_duplicate_tokens = false;
  // Expert tensor-slicing: each expert's hidden width F split over the group like a dense MLP's
  // (MoELayer::slice_experts); otherwise MoE layers are whole on every rank.
  bool slice_experts = false;

  int size() const { return group ? group->size() : 1; }
  int rank() const { return group ? group->rank() : 0; }
  bool active() const { return size() > 1; }
  // This rank's share of n columns, heads or rows (n divides by size(): the config checks it).
  int64_t part(int64_t n) const;
  // t = the sum of every rank's t, in place: host f32 tensors over MPI, GPU f32 or bf16 tensors
  // over device_group.
  void all_reduce(const Tensor& t) const;
  // all [size, numel(t)] = every rank's t in rank order (f32, on one device).
  void all_gather(const Tensor& t, const Tensor& all) const;
  // device_group, which GPU tensors need (an error naming it when missing).
  dist::DeviceGroup& gpu_group() const;
};

// Why `model` cannot be split over tp ranks, or an empty message when it can: tp splits the heads,
// the kv heads, the dense FFN's width and the vocabulary, and needs q/k norms per head; with
// expert_slicing each MoE layer's expert width too, and on a GPU (on_gpu) each slice a multiple
// of 8 wide (the expert kernels' 16-byte rows). option: "tp" or "expert_slicing", the setting the
// message goes after ("tp is 3, which does not divide model.num_heads (4)").
struct TensorParallelMisfit {
  std::string option, message;
};
TensorParallelMisfit tensor_parallel_misfit(const ModelConfig& model, int64_t tp,
                                            bool expert_slicing, bool on_gpu = false);

// p[i] = std * normal draw (first + i) of the counter stream (seed, offset): a part of a larger
// tensor gets the numbers its elements have in the whole.
void fill_normal(float* p, int64_t n, float std, uint64_t seed, uint64_t offset, int64_t first = 0);
// `local` is this rank's part along split_dim (0: rows, 1: columns, -1: whole) of a [rows, cols]
// matrix whose element (i, j) is std * normal draw (first + i * cols + j) of (seed, offset).
void fill_normal_part(const Tensor& local, int64_t rows, int64_t cols, int split_dim,
                      const TensorParallel& tp, float std, uint64_t seed, uint64_t offset,
                      int64_t first);

}  // namespace moex::model
