// The host's exp for splat opacities: a polynomial exp written once for float and for the CPU
// backend's float lanes, so scalar and eight-lane code give the same bits.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "vector_math.h"

namespace dgrd {

// The bytes of `from` read as a To of the same size (C++20's std::bit_cast).
template <typename To, typename From>
inline To bits_as(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "a bit cast keeps the size");
  To to;
  std::memcpy(&to, &from, sizeof(to));
  return to;
}

// log2(e), by which a base-2 exponential takes exp: exp_poly's range reduction and the GPU's
// ex2.approx (splat_exp in blend.h).
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2 = 0.693147180559945309f;  // 1 / log2(e)

// Scalar versions of the lane helpers in cpu_lanes.h, so exp_poly reads the same for both (and
// select, vector_math.h's).
inline int32_t float_bits(float f) { return bits_as<int32_t>(f); }
inline float bits_float(int32_t i) { return bits_as<float>(i); }

// exp(x) for x <= 0 (a splat's power), within 2 ulp of the exact value: x = n ln2 + r with
// |r| <= ln2 / 2, exp(r) by its Taylor series to r^7 (truncation below 6e-9), and 2^n added to
// the exponent bits. Below -87 the result is 0 (exp(-87) ~ 1.6e-38 is the last normal float
// reached this way; no opacity makes so faint a splat visible). An x above 0 is taken as 0 (so
// that 2^n stays within the exponent's bits: splat_alpha takes the exp of every power before it
// tests the sign). Plain arithmetic, no branches, no libm call: no errno, and the same
// operations in every lane.
template <typename V>
inline V exp_poly(V x) {
  const float kLowest = -87.0f;
  const float kRound = 12582912.0f;           // 1.5 * 2^23: adding it rounds to an integer
  const float kLn2Hi = 0.693145751953125f;    // ln2 split so that n * kLn2Hi is exact
  const float kLn2Lo = 1.42860682030941723e-6f;
  const V clamped = min2(max2(x, V(kLowest)), V(0.0f));
  const V shifted = clamped * V(kLog2e) + V(kRound);
  const V n = shifted - V(kRound);
  const V r = (clamped - n * V(kLn2Hi)) - n * V(kLn2Lo);
  V p = V(1.0f / 5040.0f);
  p = p * r + V(1.0f / 720.0f);
  p = p * r + V(1.0f / 120.0f);
  p = p * r + V(1.0f / 24.0f);
  p = p * r + V(1.0f / 6.0f);
  p = p * r + V(0.5f);
  p = p * r + V(1.0f);
  p = p * r + V(1.0f);
  // n as an integer is the difference of the two floats' bits (both in [2^23, 2^24)).
  const auto n_int = float_bits(shifted) - float_bits(V(kRound));
  const V scaled = bits_float(float_bits(p) + n_int * (1 << 23));
  return select(x < V(kLowest), V(0.0f), scaled);
}

inline float host_splat_exp(float power) { return exp_poly(power); }
inline double host_splat_exp(double power) { return std::exp(power); }

}  // namespace dgrd
