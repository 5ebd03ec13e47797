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

// A fused QKV projection's rows into attention's inputs: qkv [B * T, Q + 2K] -> q [B, T, H, Dh],
// k and v [B, T, Hkv, Dh] (Q = H * Dh, K = Hkv * Dh), q and k rotated as rope() does (token t at
// start_pos + t); theta <= 0: split only. On a GPU one kernel (docs/gpu-model.md §Attention's QKV
// split).
void split_qkv(const Tensor& qkv, int64_t start_pos, double theta, const Tensor& q, const Tensor& k,
               const Tensor& v);
// split_qkv's backward: dqkv [B * T, Q + 2K] (written) from dq and dk rotated back and dv.
void merge_qkv_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, int64_t start_pos,
                        double theta, const Tensor& dqkv);

}  // namespace moex::ops
