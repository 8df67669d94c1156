// exp and tanh for CPU loops that the compiler vectorises: plain arithmetic and
// selects, no library calls (std::exp and std::tanh are scalar calls, which keep an
// elementwise loop ~5-10x slower than memory). Float only; double keeps std:: math.
//   fast_exp: Cody-Waite reduction and Cephes' degree-6 polynomial, ~1 ulp on
//     [-87, 88.37]; the argument is clamped there, so exp(-inf) gives 1.6e-38, not 0
//     (harmless beside the 1 that every softmax denominator and sigmoid adds).
//   fast_tanh: 1 - 2 / (exp(2a) + 1), with the Taylor series below |a| = 1/16 where
//     that form would lose relative accuracy; ~1e-7 absolute error.
// NaN inputs give NaN.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

namespace genfast {

// e^(x - n ln 2) for n = round(x / ln 2): ln 2 in two parts so that n ln 2 is exact, then
// Cephes' degree-6 polynomial; F is float or a GCC vector of floats (csrc/cpu/dmol_lanes_impl.h).
template <typename F>
__attribute__((always_inline)) inline F exp_reduced(F x, F n) {
  const F r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  F p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * (r * r) + r + 1.0f;
}

__attribute__((always_inline)) inline float fast_exp(float x) {
  const float clamped = x < -87.0f ? -87.0f : (x > 88.37f ? 88.37f : x);
  x = x != x ? x : clamped;
  // n = round(x / ln 2) by the 1.5 * 2^23 trick (no rounding call to vectorise).
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const int32_t e = static_cast<int32_t>(n) + 127;
  return exp_reduced(x, n) * std::bit_cast<float>(static_cast<uint32_t>(e) << 23);
}

__attribute__((always_inline)) inline float fast_tanh(float a) {
  const float small = a * (1.0f + (a * a) * (-1.0f / 3.0f + (a * a) * (2.0f / 15.0f)));
  const float large = 1.0f - 2.0f / (fast_exp(2.0f * a) + 1.0f);
  return (a < 0.0625f && a > -0.0625f) ? small : large;
}

inline double fast_exp(double x) { return std::exp(x); }
inline double fast_tanh(double a) { return std::tanh(a); }

}  // namespace genfast
