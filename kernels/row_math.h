//
// Scalar helpers written so that GCC vectorises the row loops that use them
// (kernels/*.cc, built with -O3): no calls into libm, no branches.
//  - exp_approx: exp(x) by Cody-Waite reduction and Cephes' degree-6
//    polynomial, 1-2 ulp in float32 over [-87, 88] (inputs are clamped there;
//    below -87 it returns about 1.6e-38, not 0).
//  - bf16 conversions by bit manipulation with round-to-nearest-even, as
//    c10::BFloat16 does (quiet NaNs stay NaN).
#ifndef PEFT_KERNELS_ROW_MATH_H_
#define PEFT_KERNELS_ROW_MATH_H_

#include <cstdint>
#include <cstring>

#include <c10/util/BFloat16.h>

namespace peft::kernels::row_math {

inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);  // round(x / ln 2)
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;          // x - n ln 2, in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float to_float(float x) { return x; }
inline float to_float(c10::BFloat16 x) {
  const uint32_t bits = static_cast<uint32_t>(x.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

template <typename T>
inline T from_float(float f);
template <>
inline float from_float<float>(float f) {
  return f;
}
template <>
inline c10::BFloat16 from_float<c10::BFloat16>(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  bits += 0x7FFFu + ((bits >> 16) & 1u);  // round to nearest, ties to even
  return c10::BFloat16(static_cast<uint16_t>(bits >> 16), c10::BFloat16::from_bits());
}

}  // namespace peft::kernels::row_math

#endif  // PEFT_KERNELS_ROW_MATH_H_
