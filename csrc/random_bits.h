// The random bits of stochastic rounding, for every kernel (C++, CUDA) and, written again in torch,
// for the reference (mlr_kernels/backends/reference.py, rounding.py): a counter-based generator, so
// that element i of a segment at step t gets the same bits whatever the tiling, thread count,
// backend or resume, and no generator state needs saving. A step's bits are
//
//   key  = splitmix64(stream * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + (i >> 32)) (low 32)
//   bits = lowbias32(key ^ (i & 0xFFFFFFFF))
//
// with `stream` the segment's random stream (mlr_kernels/segments.py: a hash of the optimizer's
// seed and the parameter's place in its param groups). splitmix64 is the finalizer of Steele,
// Lea and Flood, "Fast splittable pseudorandom number generators" (OOPSLA 2014); lowbias32 is
// Chris Wellons' 32-bit integer hash (https://nullprogram.com/blog/2018/07/31/, bias 0.17).
// Integer multiplies and shifts only: the per-element hash auto-vectorizes.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MLR_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MLR_HOST_DEVICE inline __attribute__((always_inline))
#endif

namespace mlr {

MLR_HOST_DEVICE uint32_t random_key(uint64_t stream, uint64_t step, uint64_t index) {
  uint64_t z = stream * 0x9E3779B97F4A7C15ull + step * 0xBF58476D1CE4E5B9ull + (index >> 32);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return static_cast<uint32_t>(z ^ (z >> 31));
}

MLR_HOST_DEVICE uint32_t random_bits(uint32_t key, uint32_t index) {
  uint32_t x = key ^ index;
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

// float32 -> bfloat16, rounded up or down with probabilities that make the result unbiased: the
// 16 bits dropped, compared with 16 random bits, decide (adding them carries into the kept bits
// exactly when they exceed the complement). Gupta et al., "Deep Learning with Limited Numerical
// Precision" (ICML 2015), section 3. NaN stays NaN.
MLR_HOST_DEVICE uint16_t float_to_bf16_stochastic(float value, uint32_t random16) {
#if defined(__CUDA_ARCH__)
  const uint32_t bits = __float_as_uint(value);
#else
  const uint32_t bits = __builtin_bit_cast(uint32_t, value);
#endif
  const uint32_t rounded = bits + (random16 & 0xFFFFu);
  return value != value ? uint16_t{0x7FC0} : static_cast<uint16_t>(rounded >> 16);
}

}  // namespace mlr
