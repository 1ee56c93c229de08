// Eight float lanes for the CPU backend (GCC/Clang vector extensions), so the shared blend math
// runs on eight pixels of a tile row at once: SSE2/NEON pairs, or one AVX2 register.
#pragma once

#include <cstdint>
#include <cstring>

#include "fast_exp.h"

#define DGRD_LANE_FN inline __attribute__((always_inline))

namespace dgrd {

constexpr int kLanes = 8;

// Aligned to their full size on every target: without AVX, GCC gives a 32-byte vector only
// 16-byte alignment, while the AVX2 clone of a function stores it with aligned 32-byte moves.
using LaneFloats = float __attribute__((vector_size(kLanes * sizeof(float)), aligned(32)));
using LaneInts = int32_t __attribute__((vector_size(kLanes * sizeof(int32_t)), aligned(32)));

// A lane mask: all bits set (-1) where true, 0 where false, as vector comparisons produce.
struct LaneMask {
  LaneInts m;
  DGRD_LANE_FN bool any() const {
    int32_t lanes[kLanes];
    std::memcpy(lanes, &m, sizeof(m));
    int32_t acc = 0;
    for (int k = 0; k < kLanes; ++k) acc |= lanes[k];
    return acc != 0;
  }
  DGRD_LANE_FN bool lane(int k) const { return m[k] != 0; }
};
DGRD_LANE_FN LaneMask operator&(LaneMask a, LaneMask b) { return {a.m & b.m}; }
DGRD_LANE_FN LaneMask operator|(LaneMask a, LaneMask b) { return {a.m | b.m}; }
DGRD_LANE_FN LaneMask operator!(LaneMask a) { return {~a.m}; }

// Eight floats that behave like a float in the shared templates: arithmetic with scalars
// broadcasts, comparisons give a LaneMask.
struct Lanes {
  LaneFloats v;
  DGRD_LANE_FN Lanes() : v(LaneFloats{} ) {}
  DGRD_LANE_FN Lanes(float s) : v(LaneFloats{} + s) {}  // NOLINT: broadcasts like a float
  DGRD_LANE_FN explicit Lanes(LaneFloats x) : v(x) {}
  DGRD_LANE_FN static Lanes load(const float* p) {
    LaneFloats x;
    std::memcpy(&x, p, sizeof(x));
    return Lanes(x);
  }
  DGRD_LANE_FN void store(float* p) const { std::memcpy(p, &v, sizeof(v)); }
  DGRD_LANE_FN float operator[](int k) const { return v[k]; }
  DGRD_LANE_FN Lanes& operator+=(Lanes b) { v += b.v; return *this; }
  DGRD_LANE_FN Lanes& operator-=(Lanes b) { v -= b.v; return *this; }
};
DGRD_LANE_FN Lanes operator+(Lanes a, Lanes b) { return Lanes(a.v + b.v); }
DGRD_LANE_FN Lanes operator-(Lanes a, Lanes b) { return Lanes(a.v - b.v); }
DGRD_LANE_FN Lanes operator*(Lanes a, Lanes b) { return Lanes(a.v * b.v); }
DGRD_LANE_FN Lanes operator/(Lanes a, Lanes b) { return Lanes(a.v / b.v); }
DGRD_LANE_FN Lanes operator-(Lanes a) { return Lanes(-a.v); }
DGRD_LANE_FN LaneMask operator<(Lanes a, Lanes b) { return {a.v < b.v}; }
DGRD_LANE_FN LaneMask operator<=(Lanes a, Lanes b) { return {a.v <= b.v}; }
DGRD_LANE_FN LaneMask operator>=(Lanes a, Lanes b) { return {a.v >= b.v}; }
DGRD_LANE_FN LaneMask operator>(Lanes a, Lanes b) { return {a.v > b.v}; }

DGRD_LANE_FN Lanes select(LaneMask m, Lanes a, Lanes b) { return Lanes(m.m ? a.v : b.v); }
DGRD_LANE_FN LaneInts select(LaneMask m, LaneInts a, LaneInts b) { return m.m ? a : b; }
// The shared math's min2/max2 (a < b ? a : b) per lane; non-templates, so chosen over them.
DGRD_LANE_FN Lanes min2(Lanes a, Lanes b) { return select(a < b, a, b); }
DGRD_LANE_FN Lanes max2(Lanes a, Lanes b) { return select(a > b, a, b); }

// Bit access for exp_poly's scaling step (a struct, so the shared template finds these by ADL).
struct LaneBits {
  LaneInts v;
};
DGRD_LANE_FN LaneBits operator+(LaneBits a, LaneBits b) { return {a.v + b.v}; }
DGRD_LANE_FN LaneBits operator-(LaneBits a, LaneBits b) { return {a.v - b.v}; }
DGRD_LANE_FN LaneBits operator*(LaneBits a, int32_t s) { return {a.v * s}; }
DGRD_LANE_FN LaneBits float_bits(Lanes a) {
  LaneBits b;
  std::memcpy(&b.v, &a.v, sizeof(b.v));
  return b;
}
DGRD_LANE_FN Lanes bits_float(LaneBits b) {
  LaneFloats f;
  std::memcpy(&f, &b.v, sizeof(f));
  return Lanes(f);
}
DGRD_LANE_FN Lanes zero_unless(LaneMask m, Lanes a) { return select(m, a, Lanes(0.f)); }

// The splat exponential on lanes: the same polynomial as for one float (fast_exp.h).
DGRD_LANE_FN Lanes host_splat_exp(Lanes power) { return exp_poly(power); }

}  // namespace dgrd
