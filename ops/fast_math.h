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

// e^t for t in [-87.3, 88] (NaN gives NaN): 2^n (1 + p(r)) with 2^n a normal float taken
// from the bits of the rounding sum, so none of fast_exp's range handling. For callers that
// clamp their argument (fast_tanh, fast_sigmoid).
inline float exp_in_range(float t) {
  const float s = t * 1.44269504088896341f + 12582912.0f;  // 1.5 * 2^23 + n in the low bits
  const float n = s - 12582912.0f;
  float r = t - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float q = 1.984830596e-4f;  // e^r - 1 = r + r^2 q(r) on |r| <= ln 2 / 2 (minimax)
  q = q * r + 1.394062070e-3f;
  q = q * r + 8.333384991e-3f;
  q = q * r + 4.166636243e-2f;
  q = q * r + 1.666666567e-1f;
  q = q * r + 0.5f;
  const float p = r * r * q + r;
  const float scale = std::bit_cast<float>((std::bit_cast<uint32_t>(s) + 127u) << 23);
  return scale * p + scale;
}

inline float fast_tanh(float x) {
  // Small |x|: odd polynomial (no cancellation). Otherwise 1 - 2 / (e^{2|x|} + 1), with
  // e^t = 2^n (1 + p(r)) for t = 2|x| clamped to 40 (where the result is 1): t >= 0 needs
  // none of fast_exp's range handling, and 2^n comes from the bits of the rounding sum, so
  // this is about half of fast_exp + a divide. Within 1.5 ulp (checked on every float).
  const float a = std::fabs(x);
  const float z = a * a;
  float sp = -5.70498872745e-3f;
  sp = sp * z + 2.06390887954e-2f;
  sp = sp * z - 5.37397155531e-2f;
  sp = sp * z + 1.33314422036e-1f;
  sp = sp * z - 3.33332819422e-1f;
  const float small = a * z * sp + a;
  float t = 2.0f * a;
  t = t > 40.0f ? 40.0f : t;  // NaN passes through
  const float big = 1.0f - 2.0f / (exp_in_range(t) + 1.0f);
  return std::copysign(a < 0.625f ? small : big, x);  // odd: keeps -0
}

inline float fast_sigmoid(float x) {
  // 1 / (1 + e^{-x}) with e^t for t = -x clamped to [-87.3, 88]: 2^n is then a normal float
  // (n <= 127), so none of fast_exp's range handling is needed; 0 beyond. Within 2.5 ulp
  // where the result is a normal float, within 6.1e-39 below (checked on every float).
  float t = -x;
  t = t < -87.3f ? -87.3f : t;
  const bool zero = t > 88.0f;
  t = zero ? 88.0f : t;  // NaN passes through both
  return zero ? 0.0f : 1.0f / (1.0f + exp_in_range(t));
}

inline double fast_exp(double x) { return std::exp(x); }
inline double fast_tanh(double x) { return std::tanh(x); }
inline double fast_sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace tessel::ops
