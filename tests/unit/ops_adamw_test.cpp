// ops::adamw_step on the CPU with a bf16 working copy (ZeRO-Offload's upload buffer): the update
// is the plain step's, every element of the copy is written, and what no segment covers (the
// buffer's alignment padding) is the master cast as it is. bf16 moments go to the bf16-moment
// kernel segment by segment; mixed moment types are refused.
#include <gtest/gtest.h>

#include <cstring>

#include "core/dtype.h"
#include "cpu/adamw.h"
#include "ops/adamw.h"

namespace moex {
namespace {

Tensor filled(int64_t n, float start, float step) {
  Tensor t = Tensor::empty(Shape{n}, DType::kF32, Device::cpu());
  for (int64_t i = 0; i < n; ++i) t.data<float>()[i] = start + step * static_cast<float>(i % 97);
  return t;
}

TEST(OpsAdamW, CpuWorkingCopyHoldsEveryElementRounded) {
  const int64_t n = 300;
  // Two tensors with padding before, between and after them.
  const std::vector<ops::AdamWSegment> parts = {{5, 120, 0.1f}, {190, 70, 0.0f}};
  const ops::AdamWSegments segments(parts, Device::cpu());
  ops::AdamWHyper h;
  h.lr = 0.01;
  h.step = 3;
  h.grad_scale = 0.5;
  const Tensor g = filled(n, -0.7f, 0.013f);
  Tensor p = filled(n, -1.3f, 0.029f), m = filled(n, 0.01f, 0.001f), v = filled(n, 0.02f, 0.001f);
  Tensor p_ref = filled(n, -1.3f, 0.029f), m_ref = filled(n, 0.01f, 0.001f),
         v_ref = filled(n, 0.02f, 0.001f);
  Tensor copy = Tensor::empty(Shape{n}, DType::kBF16, Device::cpu());
  std::memset(copy.raw_data(), 0xff, copy.nbytes());  // NaN everywhere: each must be written
  ops::adamw_step(p, copy, g, m, v, segments, h);
  ops::adamw_step(p_ref, Tensor(), g, m_ref, v_ref, segments, h);
  const uint16_t* c = static_cast<const uint16_t*>(copy.raw_data());
  const float p0 = -1.3f;  // the padding's master value at element 0, never updated
  EXPECT_EQ(p.data<float>()[0], p0);
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(p.data<float>()[i], p_ref.data<float>()[i]) << i;
    ASSERT_EQ(m.data<float>()[i], m_ref.data<float>()[i]) << i;
    ASSERT_EQ(c[i], f32_to_bf16(p_ref.data<float>()[i])) << i;
  }
  // Segments out of buffer order cannot be paired with the copy.
  const ops::AdamWSegments unordered({{190, 70, 0.0f}, {5, 120, 0.1f}}, Device::cpu());
  EXPECT_THROW(ops::adamw_step(p, copy, g, m, v, unordered, h), Error);
}

TEST(OpsAdamW, Bf16MomentsTakeTheBf16MomentKernelPerSegment) {
  const int64_t n = 300;
  const std::vector<ops::AdamWSegment> parts = {{5, 120, 0.1f}, {190, 70, 0.0f}};
  const ops::AdamWSegments segments(parts, Device::cpu());
  ops::AdamWHyper h;
  h.lr = 0.01;
  h.step = 4;
  h.grad_scale = 0.5;
  const Tensor g = filled(n, -0.7f, 0.013f);
  Tensor p = filled(n, -1.3f, 0.029f), m = Tensor::empty(Shape{n}, DType::kBF16, Device::cpu());
  Tensor v = Tensor::empty(Shape{n}, DType::kBF16, Device::cpu());
  std::vector<float> p_ref(p.data<float>(), p.data<float>() + n);
  std::vector<uint16_t> m_ref(n), v_ref(n);
  for (int64_t i = 0; i < n; ++i) {
    m_ref[i] = f32_to_bf16(0.01f + 0.001f * static_cast<float>(i % 89));
    v_ref[i] = f32_to_bf16(0.02f + 0.001f * static_cast<float>(i % 83));
  }
  std::memcpy(m.raw_data(), m_ref.data(), n * 2);
  std::memcpy(v.raw_data(), v_ref.data(), n * 2);
  ops::adamw_step(p, Tensor(), g, m, v, segments, h);
  for (const ops::AdamWSegment& s : parts) {
    cpu::AdamWConfig c;
    c.lr = h.lr;
    c.beta1 = h.beta1;
    c.beta2 = h.beta2;
    c.eps = h.eps;
    c.weight_decay = s.weight_decay;
    c.grad_scale = h.grad_scale;
    cpu::adamw_step<float>(p_ref.data() + s.offset, g.data<float>() + s.offset,
                           m_ref.data() + s.offset, v_ref.data() + s.offset, s.count, h.step, c);
  }
  const uint16_t* mo = static_cast<const uint16_t*>(m.raw_data());
  const uint16_t* vo = static_cast<const uint16_t*>(v.raw_data());
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(p.data<float>()[i], p_ref[i]) << i;
    ASSERT_EQ(mo[i], m_ref[i]) << i;
    ASSERT_EQ(vo[i], v_ref[i]) << i;
  }
  // One moment in fp32 and the other in bf16 is a caller's error.
  Tensor v32 = filled(n, 0.02f, 0.001f);
  try {
    ops::adamw_step(p, Tensor(), g, m, v32, segments, h);
    FAIL() << "mixed moment dtypes were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("moments"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moex
