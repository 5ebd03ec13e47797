// AdamW over a model's flat buffers (torch.optim.AdamW semantics, cpu/adamw.h), all tensors in
// one pass, and the global gradient norm. The master weights, gradients and both moments share
// the parameter buffer's layout; on the GPU a bf16 working copy of fp32 master weights is
// rewritten in the same pass.
#pragma once

#include <vector>

#include "core/tensor.h"

namespace moex::ops {

// One tensor of the flat buffers with its weight decay (layout shared with the CUDA kernel).
struct AdamWSegment {
  int64_t offset = 0;
  int64_t count = 0;
  float weight_decay = 0.0f;
};

struct AdamWHyper {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  int64_t step = 1;         // 1-based
  double grad_scale = 1.0;  // clipping coefficient
};

// The segments, kept where the step runs (uploaded once for a CUDA buffer).
class AdamWSegments {
 public:
  AdamWSegments(std::vector<AdamWSegment> segments, const Device& device);
  const std::vector<AdamWSegment>& host() const { return host_; }
  const Tensor& device_table() const { return device_; }  // u8 bytes of host(); CUDA only

 private:
  std::vector<AdamWSegment> host_;
  Tensor device_;
};

// master: f32 [total], or bf16 (optimizer.master_dtype: the update is stored with stochastic
// rounding, core/stochastic_round.h; on the host, ZeRO-Offload's tile of a GPU model's bf16
// weights); grad: f32 [total], or bf16 (optimizer.grads_dtype), on the same device; exp_avg,
// exp_avg_sq: both f32, or both bf16 (read as fp32, stored with stochastic rounding); working_copy:
// bf16 [total] on CUDA with an f32 master, undefined with a bf16 one; on the CPU, where the master
// is the weight the model computes with, undefined, or the host buffer ZeRO-Offload uploads into a
// GPU model's bf16 copy (written in the same pass).
void adamw_step(const Tensor& master, const Tensor& working_copy, const Tensor& grad,
                const Tensor& exp_avg, const Tensor& exp_avg_sq, const AdamWSegments& segments,
                const AdamWHyper& hyper);

// sum(grad^2) in a fixed order (the same bits for any thread count), returned to the host; grad
// f32, or bf16 on CUDA.
double sum_of_squares(const Tensor& grad);

}  // namespace moex::ops
