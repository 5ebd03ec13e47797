// Causal grouped-query attention. q [B, Tq, H, Dh]; k, v [B, Tk, Hkv, Dh]; query i sits at
// position start_pos + i and attends to keys 0..start_pos+i (training: start_pos 0, Tq == Tk;
// decoding: k/v are a cache of capacity Tk). Tensors in the compute dtype.
// What forward keeps for backward depends on the device (attention_saved_shape): the CPU keeps the
// probabilities [B, H, Tq, Tk], the GPU's flash kernel only the row log-sum-exp [B, H, Tq]; both f32.
#pragma once

#include "core/tensor.h"

namespace moex::ops {

Shape attention_saved_shape(const Device& device, int64_t batch, int64_t heads, int64_t q_len,
                            int64_t kv_len);

void attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t start_pos,
               const Tensor& out,     // [B, Tq, H, Dh]
               const Tensor& saved);  // attention_saved_shape, f32

// Training case only (start_pos 0, Tq == Tk); dq, dk, dv written.
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& saved, const Tensor& dq,
                        const Tensor& dk, const Tensor& dv);

}  // namespace moex::ops
