// How the CPU kernels get their vector width. The loops are plain scalar C++ that the compiler
// auto-vectorizes, and every function marked MLR_VECTOR_CLONES is compiled once per x86-64 level:
// v4 (AVX-512 F/BW/DQ/VL: 512-bit vectors for the 16-bit dtypes too), v3 (AVX2, FMA, F16C) and the
// SSE2 baseline; the dynamic loader runs GCC's resolver once and binds the widest clone this CPU
// supports (function multiversioning through an ifunc). The Adam math never names a width, and the
// library still loads on CPUs without AVX. Other compilers and architectures build the baseline
// only (NEON on AArch64).
//
// Every clone produces the same bits: setup.py compiles with -ffp-contract=off, so no clone fuses
// a multiply-add that another rounds twice, and the two fused multiply-adds the math asks for are
// std::fma, one instruction in v3 and v4 and glibc's exact fmaf in the baseline, which leaves the
// baseline loop scalar (about 8x slower; only CPUs without AVX2 run it). Checked: objdump shows
// zmm vsqrtps/vdivps/vfmadd in every v4 loop and ymm in v3, and builds with the baseline, v3 or v4
// alone give bit-identical results for every dtype.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MLR_VECTOR_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MLR_VECTOR_CLONES
#endif

// Helpers called from a clone are inlined into it so that they are compiled for its instruction set.
#define MLR_INLINE inline __attribute__((always_inline))
