// Branch-free float exp and tanh that the compiler can vectorise (glibc's are scalar
// calls). Within 2 ulp of the correctly rounded result over the whole float range; exp of
// -inf and of anything below the smallest normal result is exactly 0. Doubles keep <cmath>:
// the double-precision gradient checks use them as the oracle.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

namespace tessel::ops {

inline float fast_exp(float x) {
  // e^x = 2^n * e^r, n = round(x / ln 2), |r| <= ln2 / 2; e^r by a degree-6 polynomial.
  const float hi = 88.72283935546875f, lo = -87.3365447505531f;
  float xc = x < lo ? lo : (x > hi ? hi : x);
  // Round to nearest by adding 1.5 * 2^23 (nearbyint is a libm call and blocks
  // vectorisation).
  float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - n * 0.693359375f;     // ln 2, split so n * C1 is exact
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^n as 2^(n-1) * 2 when n > 0, so n = 128 (x near the top) does not overflow.
  int32_t ni = static_cast<int32_t>(n);
  int32_t n1 = ni > 0 ? ni - 1 : ni;
  float y = p * std::bit_cast<float>((n1 + 127) << 23) * (ni > 0 ? 2.0f : 1.0f);
  y = x < lo ? 0.0f : y;
  y = x > hi ? INFINITY : y;
  return x != x ? x : y;
}

inline float fast_tanh(float x) {
  float a = std::fabs(x);
  // Small |x|: odd polynomial (no cancellation). Large: 1 - 2 / (e^{2|x|} + 1).
  float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  float small = x + x * z * p;
  float e = fast_exp(2.0f * (a > 9.0f ? 9.0f : a));
  float big = 1.0f - 2.0f / (e + 1.0f);
  big = a > 9.0f ? 1.0f : big;
  big = x < 0 ? -big : big;
  return std::copysign(a < 0.625f ? small : big, x);  // odd: keeps -0
}

inline double fast_exp(double x) { return std::exp(x); }
inline double fast_tanh(double x) { return std::tanh(x); }

}  // namespace tessel::ops
