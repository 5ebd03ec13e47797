// Device dispatch for MoELayer: when forward's x is a CUDA tensor, the layer runs the GPU
// implementation (cuda::MoELayerCuda) instead of the CPU stages, so callers never branch on the
// device (docs/architecture.md §Departures). The GPU specifics stay in this file pair;
// moe_layer.cpp only holds the pointer and two branches.
//
// Contract on the GPU path (differences from the CPU path are errors, never silent):
//   - x [T,d] f32 or bf16 on CUDA; y and dx come back in x's dtype, the weight gradients f32;
//   - one scratch per GPU holds every layer's within-one-call buffers (cuda::MoEScratch): the
//     layers all issue their work on the device's one stream;
//   - experts run in bf16 with fp32 accumulation, the router in fp32 (docs/architecture.md
//     §Numerics gives the tolerances);
//   - PR-MoE residual and shared experts (with or without gate) run on the GPU too; their
//     gradients come back in MoEGradients::weights like the experts';
//   - weights: the device keeps a bf16/fp32 copy and re-uploads (and converts) ALL weights only
//     when a weight tensor's storage (Tensor::storage_id, a tensor replaced in weights()) or its
//     write version (Tensor::version) changed since the last GPU forward. Whoever writes weights
//     in place calls Tensor::mark_written() on them (MoELayer::init_weights, Model::init_weights,
//     weight loading and the optimizer do); an unmarked in-place edit is not seen.
//     moe_device_weight_uploads() counts uploads.
//   - expert parallelism: the layer holds this rank's E/ep experts and exchanges tokens over the
//     expert group's GPU communicator (cuda/moe_layer_cuda.h);
//   - not supported (MOEX_CHECK): f64 layers, fixed_routing;
//   - routing() is not updated by a GPU forward (the plan stays on the device).
#pragma once

#include <cstdint>
#include <memory>

#include "core/tensor.h"
#include "moe/moe_layer.h"

namespace moex {

// The GPU communicators of a layer's groups, each holding the ranks of its CPU twin (null: none):
// expert parallelism's (MoELayer::set_device_expert_group), Duplicate Token Dropping's tp group
// (MoELayer::drop_duplicate_tokens) and expert tensor-slicing's (MoELayer::slice_experts).
struct MoEDeviceGroups {
  dist::DeviceGroup* expert = nullptr;
  dist::DeviceGroup* duplicate = nullptr;
  dist::DeviceGroup* slice = nullptr;
};

class MoEDeviceLayer {
 public:
  virtual ~MoEDeviceLayer() = default;
  // Re-uploads the weights first when they changed (see the contract above).
  virtual const MoEOutput& forward(const MoEWeights& weights, const Tensor& x,
                                   const MoEForwardOptions& options) = 0;
  // add_bound_expert_grads, dx: see MoELayer::backward (model mode only for the first).
  virtual const MoEGradients& backward(const Tensor& dy, bool add_bound_expert_grads,
                                       const Tensor& dx) = 0;
  virtual void finish_stats() = 0;  // see MoELayer::finish_stats
  // Model mode: see MoELayer::bind_device_expert_buffers.
  virtual void bind_expert_buffers(const Tensor& w1, const Tensor& w2, const Tensor& dw1,
                                   const Tensor& dw2) = 0;
  // The layer's groups (see MoEDeviceGroups); the next forward builds its GPU layer over them.
  virtual void set_groups(const MoEDeviceGroups& groups) = 0;
  // The expert-row exchanges so far (see moe::ExchangeStats; DTD and slicing do not run on the
  // GPU). Waits for the queued ones, whose stream time it reads.
  virtual moe::ExchangeStats exchange_stats() = 0;
  // Device bytes the layer holds for backward between calls (its kept expert rows).
  virtual size_t kept_bytes() const = 0;
  // See MoELayer::device_kept_bytes_bound.
  virtual size_t kept_bytes_bound(int64_t tokens, const MoEForwardOptions& options) const = 0;
};

// Device bytes of the row scratch every MoE layer on GPU `ordinal` shares (docs/gpu-model.md §MoE
// row buffers); 0 in a build without CUDA.
size_t moe_device_scratch_bytes(int ordinal);

// Weight uploads done by device layers in this process (tests, diagnostics).
int64_t moe_device_weight_uploads();

// The implementation for x's device, or an error naming why there is none (a build without CUDA).
std::unique_ptr<MoEDeviceLayer> make_moe_device_layer(const MoEConfig& config, DType dtype,
                                                      const Device& device,
                                                      const MoEDeviceGroups& groups = {});

}  // namespace moex
