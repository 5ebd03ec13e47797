// MOEX_AVX2_CLONE: with GCC on x86-64, the function it marks also gets an AVX2 clone, which the
// loader picks when the CPU has AVX2 (the library is built for baseline x86-64, SSE2). Elsewhere
// (clang refuses clones of function templates; other architectures have no "avx2") the mark is
// empty and the one baseline function remains. Mark only code whose results do not depend on the
// clone: no fma contraction happens in either (-ffp-contract=off).
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MOEX_AVX2_CLONE __attribute__((target_clones("avx2", "default")))
#else
#define MOEX_AVX2_CLONE
#endif
