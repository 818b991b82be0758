// bfloat16 and float16 <-> float32 conversions written with integer and float operations that
// auto-vectorize (GCC does not vectorize _Float16 casts without AVX512-FP16). Exact for every input:
// widening is lossless, narrowing rounds to nearest even, and NaN stays NaN.
#pragma once

#include <cmath>
#include <cstdint>

#include "cpu_vectorize.h"

namespace mlr {

MLR_INLINE float bits_to_float(uint32_t bits) { return __builtin_bit_cast(float, bits); }
MLR_INLINE uint32_t float_to_bits(float value) { return __builtin_bit_cast(uint32_t, value); }

MLR_INLINE float bf16_to_float(uint16_t bf16) { return bits_to_float(uint32_t{bf16} << 16); }

MLR_INLINE uint16_t float_to_bf16(float value) {
  const uint32_t bits = float_to_bits(value);
  // Adding 0x7FFF plus the lowest kept bit rounds the dropped 16 bits to nearest even.
  const uint32_t rounded = bits + 0x7FFFu + ((bits >> 16) & 1u);
  // A NaN with only low mantissa bits set would round into infinity: return the canonical quiet NaN.
  return value != value ? uint16_t{0x7FC0} : static_cast<uint16_t>(rounded >> 16);
}

// `condition ? if_true : if_false` as a mask. GCC turns a `?:` whose operand comes from a float op
// into a branch around that op, then will not if-convert it back (the op might trap) and leaves the
// whole loop scalar; masks keep the float16 conversions branch-free.
MLR_INLINE uint32_t select_bits(bool condition, uint32_t if_true, uint32_t if_false) {
  const uint32_t mask = 0u - uint32_t{condition};
  return (if_true & mask) | (if_false & ~mask);
}

MLR_INLINE float fp16_to_float(uint16_t fp16) {
  constexpr uint32_t kHalfExponent = 0x7C00u << 13;  // the half's exponent field, in float position
  const uint32_t sign = uint32_t{fp16 & 0x8000u} << 16;
  const uint32_t shifted = uint32_t{fp16 & 0x7FFFu} << 13;
  const uint32_t exponent = shifted & kHalfExponent;
  const uint32_t normal = shifted + ((127u - 15u) << 23);  // rebias the exponent
  const uint32_t inf_or_nan = normal + ((128u - 16u) << 23);  // all exponent bits set
  // Subnormal or zero: read the mantissa as the fraction of 1.m * 2^-14, then subtract 2^-14.
  const float two_pow_minus_14 = bits_to_float(113u << 23);
  const float subnormal = bits_to_float(shifted + (113u << 23)) - two_pow_minus_14;
  const uint32_t magnitude = select_bits(exponent == 0, float_to_bits(subnormal),
                                         select_bits(exponent == kHalfExponent, inf_or_nan, normal));
  return bits_to_float(magnitude | sign);
}

MLR_INLINE uint16_t float_to_fp16(float value) {
  // The float add below does the rounding, in the FPU's round-to-nearest-even. Same method as
  // c10's fp16_ieee_from_fp32_value, hence the same result as torch's .half() for every input.
  const uint32_t bits = float_to_bits(value);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const uint32_t doubled = bits + bits;  // the sign shifted out, the exponent in the top byte
  // |value| * 4, except that anything that rounds past the largest half (65504) becomes infinity.
  const float scaled = std::fabs(value) * 0x1.0p+112f * 0x1.0p-110f;
  // Adding 2^(exponent + 15 - 127) leaves exactly the half's ten mantissa bits of |value| * 4 in the
  // float; exponents below 2^-14 are clamped so that subnormal halves round at 2^-24.
  const uint32_t exponent_bits = doubled & 0xFF000000u;
  const uint32_t clamped = exponent_bits < 0x71000000u ? 0x71000000u : exponent_bits;
  const float rounded = bits_to_float((clamped >> 1) + 0x07800000u) + scaled;
  const uint32_t rounded_bits = float_to_bits(rounded);
  const uint32_t half_bits = ((rounded_bits >> 13) & 0x7C00u) + (rounded_bits & 0x0FFFu);
  const bool is_nan = doubled > 0xFF000000u;
  return static_cast<uint16_t>(sign | select_bits(is_nan, 0x7E00u, half_bits));
}

}  // namespace mlr
