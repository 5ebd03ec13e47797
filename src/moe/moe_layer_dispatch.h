// Device dispatch for MoELayer (issue 5): when forward's x is a CUDA tensor, the layer runs the GPU
// implementation (cuda::MoELayerCuda) instead of the CPU stages, so callers never branch on the
// device. Owned by the GPU engineer; moe_layer.cpp only holds the pointer and two branches.
//
// Contract on the GPU path (differences from the CPU path are errors, never silent):
//   - x [T,d] f32 or bf16 on CUDA; y, dx and the weight gradients come back as f32 CUDA tensors.
//   - experts run in bf16 with fp32 accumulation (DESIGN §8 tolerances), the router in fp32;
//   - the layer's weights (fp32, CPU or CUDA) are uploaded and converted on every forward, so
//     updates made between steps are always seen (a cost of ~2 bytes/weight per step);
//   - not supported (MOEX_CHECK): f64 layers, fixed_routing, residual (PR-MoE), shared experts;
//   - routing() is not updated by a GPU forward (the plan stays on the device).
#pragma once

#include <memory>

#include "core/tensor.h"
#include "moe/moe_layer.h"

namespace moex {

class MoEDeviceLayer {
 public:
  virtual ~MoEDeviceLayer() = default;
  virtual const MoEOutput& forward(const MoEWeights& weights, const Tensor& x,
                                   const MoEForwardOptions& options) = 0;
  virtual const MoEGradients& backward(const Tensor& dy) = 0;
};

// The implementation for x's device, or an error naming why there is none (a build without CUDA).
std::unique_ptr<MoEDeviceLayer> make_moe_device_layer(const MoEConfig& config, DType dtype,
                                                      const Device& device);

}  // namespace moex
