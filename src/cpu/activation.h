// Element-wise activations on the CPU, forward and backward, templated on the float type.
// x, y, dx, dy: [n] unless stated; backward functions take the forward input (not the output).
// The GELU and SwiGLU backwards also write the forward's output y again when y is not null (the
// forward's bits; y may be dy itself, each element is read before it is overwritten), so a layer
// need not keep it (docs/gpu-model.md §What a training forward keeps).
#pragma once

#include <cstdint>

namespace moex::cpu {

// GELU: tanh approximation (GPT-2, Megatron/DeepSpeed GPT's bias_gelu) or exact
// 0.5x(1+erf(x/sqrt2)).
template <typename T>
void gelu_forward(const T* x, T* y, int64_t n, bool exact);
template <typename T>
void gelu_backward(const T* x, const T* dy, T* dx, int64_t n, bool exact, T* y = nullptr);

// SiLU: x * sigmoid(x).
template <typename T>
void silu_forward(const T* x, T* y, int64_t n);
template <typename T>
void silu_backward(const T* x, const T* dy, T* dx, int64_t n);

// SwiGLU over fused rows: h [rows, 2F] holds the gate half (columns 0..F-1) then the up half
// (F..2F-1), like transformers' fused gate_up_proj; y [rows, F] = silu(gate) * up.
template <typename T>
void swiglu_forward(const T* h, T* y, int64_t rows, int64_t ffn);
// dh [rows, 2F] from h [rows, 2F] and dy [rows, F].
template <typename T>
void swiglu_backward(const T* h, const T* dy, T* dh, int64_t rows, int64_t ffn,
                     T* y = nullptr);

}  // namespace moex::cpu
