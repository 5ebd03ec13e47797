// Core types: tensor views, dtype conversions, arena, parameter buffer, Philox RNG, errors.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "core/arena.h"
#include "core/file_util.h"
#include "core/rng.h"
#include "core/tensor.h"

namespace moex {
namespace {

TEST(Tensor, SliceSharesStorage) {
  Tensor t = Tensor::empty(Shape{4, 3}, DType::kF32);
  float* p = t.data<float>();
  for (int i = 0; i < 12; ++i) p[i] = static_cast<float>(i);
  Tensor rows = t.slice(1, 3);
  EXPECT_EQ(rows.shape(), (Shape{2, 3}));
  EXPECT_EQ(rows.data<float>()[0], 3.0f);
  rows.data<float>()[0] = -1.0f;
  EXPECT_EQ(p[3], -1.0f);
  EXPECT_THROW(t.slice(2, 5), Error);
  EXPECT_THROW(t.data<int32_t>(), Error);
  EXPECT_THROW(t.view(Shape{5, 2}), Error);
  EXPECT_EQ(t.view(Shape{12}).numel(), 12);
}

TEST(Tensor, WriteVersionIsSharedByViewsOfOneStorage) {
  const Tensor a = Tensor::zeros(Shape{4, 3}, DType::kF32);
  const Tensor rows = a.slice(1, 3), flat = a.view(Shape{12});
  const Tensor other = Tensor::zeros(Shape{4, 3}, DType::kF32);
  EXPECT_EQ(a.version(), 0u);
  rows.mark_written();
  EXPECT_EQ(a.version(), 1u);
  EXPECT_EQ(flat.version(), 1u);
  flat.mark_written();
  EXPECT_EQ(rows.version(), 2u);
  EXPECT_EQ(other.version(), 0u);
  EXPECT_EQ(a.storage_id(), rows.storage_id());
  EXPECT_NE(a.storage_id(), other.storage_id());
  EXPECT_EQ(Tensor().storage_id(), 0u);
  // Ids are not addresses: a new storage gets a new id even where memory is reused.
  uint64_t last = other.storage_id();
  for (int i = 0; i < 3; ++i) {
    const uint64_t id = Tensor::zeros(Shape{4, 3}, DType::kF32).storage_id();
    EXPECT_GT(id, last);
    last = id;
  }
}

TEST(ParamBuffer, EntriesShareTheFlatBuffersWriteVersion) {
  ParamBuffer params;
  params.declare("a", Shape{3, 5});
  params.declare_contiguous({"b", "c"}, {Shape{2}, Shape{7}});
  params.allocate(DType::kF32);
  const uint64_t before = params.tensor(0).version();
  params.flat().mark_written();
  for (int i = 0; i < params.size(); ++i) EXPECT_EQ(params.tensor(i).version(), before + 1);
  EXPECT_EQ(params.span(1, 2, Shape{9}).version(), before + 1);
  params.tensor(2).mark_written();
  EXPECT_EQ(params.tensor(0).version(), before + 2);
}

TEST(Tensor, AtMostFiveDims) {
  EXPECT_THROW((Shape{1, 2, 3, 4, 5, 6}), Error);
  EXPECT_EQ((Shape{1, 2, 3, 4, 5}).numel(), 120);
}

// A host tensor larger than the machine's memory and swap, or than 2^63 bytes, is one error naming
// its shape, never a malloc that Linux overcommits and the OOM killer answers later.
TEST(Tensor, ImpossibleHostSizesAreErrorsNamingTheShape) {
  auto error_of = [](const Shape& shape) {
    try {
      Tensor::empty(shape, DType::kF32);
    } catch (const Error& e) {
      return e.message();
    }
    return std::string();
  };
  const std::string huge = error_of(Shape{int64_t{1} << 30, int64_t{1} << 20});  // 4 PiB
  EXPECT_NE(huge.find("allocating F32 [1073741824, 1048576]"), std::string::npos) << huge;
  EXPECT_NE(huge.find("GiB of memory and swap"), std::string::npos) << huge;
  const std::string overflow = error_of(Shape{int64_t{1} << 40, int64_t{1} << 40});
  EXPECT_NE(overflow.find("too large to address"), std::string::npos) << overflow;
  EXPECT_EQ(Tensor::empty(Shape{3, 5}, DType::kF32).numel(), 15);
}

// Reading stops at the bound, so an endless stream (/dev/zero) costs that much and no more.
TEST(ReadFile, EndlessStreamsStopAtTheBound) {
  try {
    read_file("/dev/zero", 1 << 20);
    ADD_FAILURE() << "/dev/zero was read whole";
  } catch (const Error& e) {
    EXPECT_EQ(e.message(),
              "/dev/zero: larger than 1 MiB, the most moex reads as one file of this kind");
  }
  EXPECT_THROW(read_file("/no/such/file"), Error);
}

TEST(DType, HalfConversionsRoundTrip) {
  for (float f : {0.0f, 1.0f, -2.5f, 3.140625f, 65504.0f, 1e-5f}) {
    EXPECT_EQ(f16_to_f32(f32_to_f16(f)), f16_to_f32(f32_to_f16(f16_to_f32(f32_to_f16(f)))));
    EXPECT_NEAR(f16_to_f32(f32_to_f16(f)), f, std::fabs(f) * 1e-3 + 1e-7);
    EXPECT_NEAR(bf16_to_f32(f32_to_bf16(f)), f, std::fabs(f) * 8e-3);
  }
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(dtype_from_name("bf16"), DType::kBF16);
  EXPECT_THROW(dtype_from_name("f8"), Error);
}

TEST(Arena, AlignsAndResets) {
  Arena arena(4096);
  Tensor a = arena.alloc(Shape{3}, DType::kF32);
  Tensor b = arena.alloc(Shape{5}, DType::kF32);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.raw_data()) % Arena::kAlignment, 0u);
  EXPECT_NE(a.raw_data(), b.raw_data());
  EXPECT_THROW(arena.alloc(Shape{4096}, DType::kF32), Error);
  arena.reset();
  EXPECT_EQ(arena.alloc(Shape{3}, DType::kF32).raw_data(), a.raw_data());
}

TEST(ParamBuffer, ViewsIntoOneBuffer) {
  ParamBuffer params;
  params.declare("w", Shape{2, 3});
  params.declare("b", Shape{3});
  EXPECT_THROW(params.declare("w", Shape{1}), Error);
  params.allocate(DType::kF32);
  EXPECT_EQ(params.tensor(1).shape(), (Shape{3}));
  const char* flat = static_cast<const char*>(params.flat().raw_data());
  const char* b = static_cast<const char*>(params.tensor(1).raw_data());
  EXPECT_GE(b - flat, 6 * 4);
  EXPECT_LT(b - flat, static_cast<long>(params.flat().nbytes()));
  EXPECT_EQ(params.index_of("b"), 1);
  EXPECT_EQ(params.index_of("c"), -1);
}

TEST(ParamBuffer, ContiguousEntriesFormOneSpan) {
  ParamBuffer params;
  params.declare("a", Shape{3});
  const int first = params.declare_contiguous({"gate", "up"}, {Shape{2, 3}, Shape{2, 3}});
  params.allocate(DType::kF32);
  Tensor fused = params.span(first, first + 1, Shape{4, 3});
  EXPECT_EQ(fused.raw_data(), params.tensor(first).raw_data());
  EXPECT_EQ(static_cast<float*>(fused.raw_data()) + 6, params.tensor(first + 1).data<float>());
  EXPECT_THROW(params.span(0, 1, Shape{9}), Error);
}

// Known-answer vectors of Philox4x32-10 from the Random123 distribution (kat_vectors).
TEST(Rng, PhiloxKnownAnswers) {
  Philox4x32 zero = philox4x32_10({{0, 0, 0, 0}}, 0, 0);
  EXPECT_EQ(zero.v[0], 0x6627e8d5u);
  EXPECT_EQ(zero.v[1], 0xe169c58du);
  EXPECT_EQ(zero.v[2], 0xbc57ac4cu);
  EXPECT_EQ(zero.v[3], 0x9b00dbd8u);
  Philox4x32 ones = philox4x32_10({{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}},
                                  0xffffffffu, 0xffffffffu);
  EXPECT_EQ(ones.v[0], 0x408f276du);
  EXPECT_EQ(ones.v[1], 0x41c83b0eu);
  EXPECT_EQ(ones.v[2], 0xa20bc7c6u);
  EXPECT_EQ(ones.v[3], 0x6d5451fdu);
}

TEST(Rng, UniformIsOpenIntervalAndRepeatable) {
  double sum = 0;
  std::set<float> seen;
  for (uint64_t i = 0; i < 20000; ++i) {
    const float u = philox_uniform(7, 3, i);
    ASSERT_GT(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    EXPECT_EQ(u, philox_uniform(7, 3, i));
    sum += u;
    seen.insert(u);
  }
  EXPECT_NEAR(sum / 20000, 0.5, 0.01);
  EXPECT_GT(seen.size(), 19900u);
  EXPECT_NE(philox_uniform(7, 3, 0), philox_uniform(8, 3, 0));
  EXPECT_NE(philox_uniform(7, 3, 0), philox_uniform(7, 4, 0));
}

TEST(Error, NamesFileAndMessage) {
  try {
    MOEX_CHECK(1 == 2, "top_k (", 3, ") must be <= num_experts");
    FAIL();
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("core_test.cpp"), std::string::npos);
    EXPECT_NE(what.find("top_k (3)"), std::string::npos);
  }
}

}  // namespace
}  // namespace moex
