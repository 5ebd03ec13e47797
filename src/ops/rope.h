// Rotary position embeddings (HF "rotate_half") on x [B, T, H, Dh] in the compute dtype; token t
// of every sequence sits at position start_pos + t. y may alias x; backward rotates back.
#pragma once

#include "core/tensor.h"

namespace moex::ops {

void rope(const Tensor& x, int64_t start_pos, double theta, const Tensor& y);
// x [1, T, H, Dh] with token t at positions[t] (i32 [T] on x's device): rows of different
// sequences (serving). The positions are not checked on a GPU (the caller built them).
void rope(const Tensor& x, const Tensor& positions, double theta, const Tensor& y);
void rope_backward(const Tensor& dy, int64_t start_pos, double theta, const Tensor& dx);

}  // namespace moex::ops
