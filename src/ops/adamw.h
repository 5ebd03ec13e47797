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

// sum_of_squares(flat) taken range by range while the device goes on with other work (a model's
// backward: docs/gpu-model.md §Gradient norm during backward). On CUDA each add() queues the
// range's chunks on a side stream of low priority, behind the work queued so far on the device's
// stream; the CPU sums the whole buffer in total(). Either way total() returns the bits of
// sum_of_squares(flat). Ranges are added from the end of the buffer down, each ending where the
// last began, until they cover it: a chunk that starts in a range may read on into the ranges
// added before it, which must stay as they were until total() or join().
class PiecewiseSquares {
 public:
  explicit PiecewiseSquares(const Tensor& flat);  // f32, or bf16 on CUDA
  ~PiecewiseSquares();
  PiecewiseSquares(const PiecewiseSquares&) = delete;
  PiecewiseSquares& operator=(const PiecewiseSquares&) = delete;

  void restart();  // a new sum: nothing added yet
  void add(int64_t lo, int64_t hi);  // elements [lo, hi) are final; hi is where the last range began
  bool complete() const { return low_ == 0; }
  // The sum of a complete buffer (an error otherwise): the device's stream waits for the side
  // stream, the host for the result.
  double total();
  // The device's stream waits for the side stream's reads (the ranges may be rewritten after).
  void join();

 private:
  Tensor flat_;
  int64_t low_ = 0;       // the lowest element added so far
  Tensor partials_;       // f64 [chunks] (CUDA)
  Tensor out_;            // f64 [1] (CUDA)
  void* side_ = nullptr;  // cudaStream_t
  void* forked_ = nullptr, *joined_ = nullptr;  // cudaEvent_t: the main stream's and the side's
};

}  // namespace moex::ops
