// LayerNorm and RMSNorm over the last dimension of x [rows, dim] (a per-head q/k norm is the same
// op on a [tokens * heads, head_dim] view). x, weight, bias, y, dx in the compute dtype; the saved
// statistics (mean, rstd [rows]) and the parameter gradients are fp32, gradients accumulated.
#pragma once

#include "core/tensor.h"

namespace moex::ops {

// bias and mean undefined for RMSNorm (rms = true); mean and rstd are written for backward.
void norm(bool rms, const Tensor& x, const Tensor& weight, const Tensor& bias, float eps,
          const Tensor& y, const Tensor& mean, const Tensor& rstd);
// sum = x + res, then the norm of sum into y: a residual add and the next pre-norm, one pass on
// the GPU, the same numbers as ops::add then ops::norm (which the CPU runs). sum must not alias x,
// res or y.
void add_norm(bool rms, const Tensor& x, const Tensor& res, const Tensor& weight,
              const Tensor& bias, float eps, const Tensor& sum, const Tensor& y, const Tensor& mean,
              const Tensor& rstd);
// dx written (may alias dy); dweight (and dbias for LayerNorm with bias) accumulated.
void norm_backward(bool rms, const Tensor& dy, const Tensor& x, const Tensor& weight,
                   const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                   const Tensor& dweight, const Tensor& dbias);

}  // namespace moex::ops
