// How the CPU kernels get their vector width. The loops are plain scalar C++ that the compiler
// auto-vectorizes, and each loop is compiled once per x86-64 level through MLR_SIMD_VARIANTS: v4
// (AVX-512 F/BW/DQ/VL: 512-bit vectors for the 16-bit dtypes too), v3 (AVX2, FMA, F16C) and the
// SSE2 baseline. The kernel picks one at run time (adamw_cpu.cpp: the widest this CPU runs, unless
// the caller forces another), so every level can be run and tested on any CPU that supports it,
// and the Adam math never names a width. Other compilers and architectures build the baseline only
// (NEON on AArch64).
//
// Every level produces the same bits: setup.py compiles with -ffp-contract=off, so no level fuses
// a multiply-add that another rounds twice, and the two fused multiply-adds the math asks for are
// std::fma, one instruction in v3 and v4 and glibc's exact fmaf in the baseline, which leaves the
// baseline loop scalar (about 8x slower; only CPUs without AVX2 run it by default).
// tests/test_kernel_cpu.py runs every kernel test under each level this CPU has and compares the
// levels' results bit for bit.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MLR_HAS_X86_LEVELS 1
#define MLR_TARGET_V4 __attribute__((target("arch=x86-64-v4")))
#define MLR_TARGET_V3 __attribute__((target("arch=x86-64-v3")))
#else
#define MLR_HAS_X86_LEVELS 0
#endif

// Helpers called from a level's function are inlined into it so that they are compiled for its
// instruction set.
#define MLR_INLINE inline __attribute__((always_inline))

namespace mlr {

// The instruction-set levels a kernel is compiled for (codes shared with mlr_kernels/backends/cpu.py).
enum class SimdLevel : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

// Whether this build has code for `level` and this CPU can run it.
bool simd_level_supported(SimdLevel level);

// The widest supported level.
SimdLevel widest_simd_level();

}  // namespace mlr

// Defines NAME_baseline, and NAME_avx2 and NAME_avx512 where the build has them, all with the
// body of the always-inline function BODY: `MLR_SIMD_VARIANTS(void, adamw_tile, adamw_tile_body,
// (ParamDtype d, const TileSpan& t), (d, t))`; MLR_SIMD_SELECT(level, NAME) is the one for a
// supported `level`.
#if MLR_HAS_X86_LEVELS
#define MLR_SIMD_VARIANTS(RET, NAME, BODY, PARAMS, ARGS)       \
  RET NAME##_baseline PARAMS { return BODY ARGS; }              \
  MLR_TARGET_V3 RET NAME##_avx2 PARAMS { return BODY ARGS; }    \
  MLR_TARGET_V4 RET NAME##_avx512 PARAMS { return BODY ARGS; }
#define MLR_SIMD_SELECT(LEVEL, NAME)                                    \
  ((LEVEL) == ::mlr::SimdLevel::kAvx512 ? NAME##_avx512                 \
   : (LEVEL) == ::mlr::SimdLevel::kAvx2 ? NAME##_avx2 : NAME##_baseline)
#else
#define MLR_SIMD_VARIANTS(RET, NAME, BODY, PARAMS, ARGS) \
  RET NAME##_baseline PARAMS { return BODY ARGS; }
#define MLR_SIMD_SELECT(LEVEL, NAME) NAME##_baseline
#endif
