// Device functions of the expert activations, shared by the element-wise kernels and the fused
// decode kernels (fp32 math on values read from bf16).
#pragma once

namespace moex::cuda {

constexpr float kSqrt1_2 = 0.70710678118654752f;
constexpr float kSqrt2OverPi = 0.79788456080286536f;
constexpr float kGeluCubic = 0.044715f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

__device__ __forceinline__ float gelu(float x, bool exact) {
  if (exact) return 0.5f * x * (1.0f + erff(x * kSqrt1_2));
  return 0.5f * x * (1.0f + tanhf(kSqrt2OverPi * (x + kGeluCubic * x * x * x)));
}

__device__ __forceinline__ float gelu_grad(float x, bool exact) {
  if (exact) return 0.5f * (1.0f + erff(x * kSqrt1_2)) + x * kInvSqrt2Pi * expf(-0.5f * x * x);
  const float inner = kSqrt2OverPi * (x + kGeluCubic * x * x * x);
  const float th = tanhf(inner);
  return 0.5f * (1.0f + th) +
         0.5f * x * (1.0f - th * th) * kSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * x * x);
}

__device__ __forceinline__ float sigmoid(float x) {
  return 1.0f / (1.0f + expf(-x));
}

}  // namespace moex::cuda
