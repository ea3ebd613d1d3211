// Host stand-ins for CUDA's 16-bit storage types, so that the __half and __nv_bfloat16
// instantiations of a kernel run in the block emulator. Only storage and the conversions
// the kernels call: float -> 16 bits rounds to nearest even (overflow to infinity, NaN
// stays a quiet NaN), 16 bits -> float is exact. Checked against numpy.float16 and
// ml_dtypes.bfloat16 by the emulator's tests.

#ifndef CUDEFORM_TESTS_HOST_16BIT_H
#define CUDEFORM_TESTS_HOST_16BIT_H

#include <cstdint>
#include <cstring>

struct __half {
  std::uint16_t bits;
};
struct __nv_bfloat16 {
  std::uint16_t bits;
};
typedef __half half;
typedef __nv_bfloat16 nv_bfloat16;

namespace cudeform_host {

inline std::uint32_t float_bits(float value) {
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

inline float bits_float(std::uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// Drops the low `shift` bits of `value`, rounding to nearest, ties to even.
inline std::uint32_t shift_round_even(std::uint32_t value, int shift) {
  const std::uint32_t kept = value >> shift;
  const std::uint32_t rest = value & ((1u << shift) - 1u);
  const std::uint32_t half_way = 1u << (shift - 1);
  return kept + (rest > half_way || (rest == half_way && (kept & 1u)) ? 1u : 0u);
}

}  // namespace cudeform_host

inline __half __float2half_rn(float value) {
  const std::uint32_t bits = cudeform_host::float_bits(value);
  const std::uint16_t sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
  const std::uint32_t magnitude = bits & 0x7fffffffu;
  std::uint32_t result;
  if (magnitude > 0x7f800000u) {
    result = 0x7e00u | ((magnitude >> 13) & 0x3ffu);  // quiet NaN
  } else if (magnitude >= 0x477ff000u) {
    result = 0x7c00u;  // 65520 and above round to infinity
  } else if (magnitude >= 0x38800000u) {  // a normal half: re-bias the exponent by 112
    result = cudeform_host::shift_round_even(magnitude - 0x38000000u, 13);
  } else {  // subnormal half (or zero): units of 2**-24
    const int exponent = static_cast<int>(magnitude >> 23);
    const int shift = 126 - exponent;
    const std::uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
    result = shift > 24 ? 0u : cudeform_host::shift_round_even(mantissa, shift);
  }
  return {static_cast<std::uint16_t>(sign | result)};
}

inline float __half2float(__half value) {
  const std::uint32_t sign = static_cast<std::uint32_t>(value.bits & 0x8000u) << 16;
  const std::uint32_t exponent = (value.bits >> 10) & 0x1fu;
  const std::uint32_t mantissa = value.bits & 0x3ffu;
  if (exponent == 0x1fu) return cudeform_host::bits_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {  // zero or subnormal: mantissa * 2**-24, exact in float
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  return cudeform_host::bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

inline __nv_bfloat16 __float2bfloat16_rn(float value) {
  const std::uint32_t bits = cudeform_host::float_bits(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    return {static_cast<std::uint16_t>((bits >> 16) | 0x40u)};  // quiet NaN
  }
  return {static_cast<std::uint16_t>(cudeform_host::shift_round_even(bits, 16))};
}

inline float __bfloat162float(__nv_bfloat16 value) {
  return cudeform_host::bits_float(static_cast<std::uint32_t>(value.bits) << 16);
}

#endif  // CUDEFORM_TESTS_HOST_16BIT_H
