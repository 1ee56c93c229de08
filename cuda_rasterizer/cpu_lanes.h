// Eight float lanes for the CPU backend (GCC/Clang vector extensions; under MSVC, AVX2
// intrinsics on x64 and a portable form elsewhere), so the shared blend math runs on eight
// pixels of a tile row at once: SSE2/NEON pairs, or one AVX2 register.
#pragma once

#include <cstdint>
#include <cstring>

#include "fast_exp.h"

// Four ways to compile the lane loops (DGRD_LANE_CLONES marks them):
// - GCC on x86-64: clones for AVX-512 (x86-64-v4), AVX2 and the baseline, one picked by the
//   loader (function multi-versioning). The lanes stay eight wide: AVX-512 pays through its 32
//   registers and masked moves (backward 6% faster than AVX2), not through wider vectors.
//   Contraction into FMA is off in every clone, so all give the same bits (tested: each clone
//   run under a qemu CPU model that makes the loader pick it). The baseline clone
//   (SSE2) is slower there than the per-pixel loop, so the backend does not use the lanes on
//   an x86 CPU without AVX2 (lanes_pay in cpu_backend.cpp).
// - Other GCC/Clang targets (ARM) or DGRD_BASELINE_LANES (setup.py): one version for 16-byte
//   vectors (SSE2, NEON), with comparisons and selections written by halves of four
//   (DGRD_NARROW_LANES): GCC lowers a 32-byte comparison or ?: that the target lacks lane by
//   lane, with scalar compares and branches, while the halves and bit operations pair up.
// - MSVC on x64, which has no vector extensions and no target_clones, or DGRD_AVX2_LANES with
//   GCC/Clang and -mavx2 (CI builds it so, to test the code MSVC compiles): AVX2 intrinsics
//   (DGRD_AVX2_LANES). MSVC emits them without /arch:AVX2, so the rest of the module stays
//   SSE2, and the backend takes the lanes only where the CPU and the OS have AVX2 (lanes_pay).
// - MSVC on other targets (ARM64), or DGRD_PORTABLE_LANES with any compiler (CI builds it with
//   GCC): eight plain elements with the same operators (LaneArray), element by element.
#if defined(_MSC_VER) && !defined(__clang__)
#if !defined(DGRD_PORTABLE_LANES) && !defined(DGRD_AVX2_LANES)
#if defined(_M_X64) && !defined(_M_ARM64EC)
#define DGRD_AVX2_LANES 1
#else
#define DGRD_PORTABLE_LANES 1
#endif
#endif
#define DGRD_LANE_FN __forceinline
#else
#define DGRD_LANE_FN inline __attribute__((always_inline))
#endif

#if defined(DGRD_AVX2_LANES)
#if defined(DGRD_PORTABLE_LANES)
#error "DGRD_AVX2_LANES and DGRD_PORTABLE_LANES are two forms of the lanes: pick one"
#endif
#if defined(__GNUC__) && !defined(__AVX2__)
#error "DGRD_AVX2_LANES with GCC or Clang needs -mavx2"
#endif
#include <immintrin.h>
#endif

#if defined(DGRD_PORTABLE_LANES) || defined(DGRD_AVX2_LANES)
#define DGRD_LANE_CLONES
#elif defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    !defined(DGRD_BASELINE_LANES)
#define DGRD_LANE_CLONED 1
#if __GNUC__ >= 11
#define DGRD_LANE_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define DGRD_LANE_CLONES __attribute__((target_clones("avx2", "default")))
#endif
#else
#define DGRD_LANE_CLONES
#define DGRD_NARROW_LANES 1
#endif

namespace dgrd {

constexpr int kLanes = 8;

#ifdef DGRD_PORTABLE_LANES
// Eight elements with the operators of a GCC vector: element-wise arithmetic (with a scalar
// too, which broadcasts), bit operations, and comparisons giving -1 (true) or 0 per lane.
template <typename E>
struct alignas(32) LaneArray {
  using Element = E;
  E x[kLanes];
  DGRD_LANE_FN E operator[](int k) const { return x[k]; }
  DGRD_LANE_FN E& operator[](int k) { return x[k]; }
};
using LaneFloats = LaneArray<float>;
using LaneInts = LaneArray<int32_t>;
#define DGRD_LANE_ARRAY_OP(op)                                                                  \
  template <typename E>                                                                         \
  DGRD_LANE_FN LaneArray<E> operator op(LaneArray<E> a, LaneArray<E> b) {                       \
    for (int k = 0; k < kLanes; ++k) a.x[k] = a.x[k] op b.x[k];                                 \
    return a;                                                                                   \
  }                                                                                             \
  template <typename E>                                                                         \
  DGRD_LANE_FN LaneArray<E> operator op(LaneArray<E> a, typename LaneArray<E>::Element s) {     \
    for (int k = 0; k < kLanes; ++k) a.x[k] = a.x[k] op s;                                      \
    return a;                                                                                   \
  }
DGRD_LANE_ARRAY_OP(+)
DGRD_LANE_ARRAY_OP(-)
DGRD_LANE_ARRAY_OP(*)
DGRD_LANE_ARRAY_OP(/)
DGRD_LANE_ARRAY_OP(&)
DGRD_LANE_ARRAY_OP(|)
#undef DGRD_LANE_ARRAY_OP
#define DGRD_LANE_ARRAY_COMPARISON(op)                                                          \
  template <typename E>                                                                         \
  DGRD_LANE_FN LaneInts operator op(LaneArray<E> a, LaneArray<E> b) {                           \
    LaneInts r;                                                                                 \
    for (int k = 0; k < kLanes; ++k) r.x[k] = a.x[k] op b.x[k] ? -1 : 0;                        \
    return r;                                                                                   \
  }
DGRD_LANE_ARRAY_COMPARISON(<)
DGRD_LANE_ARRAY_COMPARISON(<=)
DGRD_LANE_ARRAY_COMPARISON(>=)
DGRD_LANE_ARRAY_COMPARISON(>)
DGRD_LANE_ARRAY_COMPARISON(==)
#undef DGRD_LANE_ARRAY_COMPARISON
template <typename E>
DGRD_LANE_FN LaneArray<E> operator-(LaneArray<E> a) {
  for (int k = 0; k < kLanes; ++k) a.x[k] = -a.x[k];
  return a;
}
DGRD_LANE_FN LaneInts operator~(LaneInts a) {
  for (int k = 0; k < kLanes; ++k) a.x[k] = ~a.x[k];
  return a;
}
// The lanes of a and b numbered 0-7 and 8-15, picked by I (as __builtin_shufflevector).
template <int... I>
DGRD_LANE_FN LaneFloats lane_shuffle(LaneFloats a, LaneFloats b) {
  static_assert(sizeof...(I) == kLanes, "one index a lane");
  const int index[kLanes] = {I...};
  LaneFloats r;
  for (int k = 0; k < kLanes; ++k)
    r.x[k] = index[k] < kLanes ? a.x[index[k]] : b.x[index[k] - kLanes];
  return r;
}
#elif defined(DGRD_AVX2_LANES)
// One AVX2 register each, with the operators of a GCC vector spelled as intrinsics. Elements
// are reached through a pointer to the register's storage, for the per-group set-up and stores
// outside the splat loop; under GCC a may_alias one (an __m256i holds long longs, not ints).
#if defined(__GNUC__)
typedef float __attribute__((may_alias)) LaneFloatElement;
typedef int32_t __attribute__((may_alias)) LaneIntElement;
#else
typedef float LaneFloatElement;
typedef int32_t LaneIntElement;
#endif
// Copies and zeros are written out so that they move one register: without /arch:AVX, MSVC
// copies a 32-byte struct, and value-initializes one, as two 16-byte halves, which a 32-byte
// load cannot then forward from. (A macro, not a template: GCC drops may_alias from a
// template argument.)
#define DGRD_LANE_REGISTER(Name, Register, Element, zeros)                                     \
  struct alignas(32) Name {                                                                   \
    Register x;                                                                               \
    DGRD_LANE_FN Name() : x(zeros()) {}                                                       \
    DGRD_LANE_FN Name(Register v) : x(v) {}               /* NOLINT: as the register */       \
    DGRD_LANE_FN Name(const Name& o) : x(o.x) {}                                              \
    DGRD_LANE_FN Name& operator=(const Name& o) {                                             \
      x = o.x;                                                                                \
      return *this;                                                                           \
    }                                                                                         \
    DGRD_LANE_FN Element operator[](int k) const {                                            \
      return reinterpret_cast<const Element*>(&x)[k];                                         \
    }                                                                                         \
    DGRD_LANE_FN Element& operator[](int k) { return reinterpret_cast<Element*>(&x)[k]; }     \
  };
DGRD_LANE_REGISTER(LaneFloats, __m256, LaneFloatElement, _mm256_setzero_ps)
DGRD_LANE_REGISTER(LaneInts, __m256i, LaneIntElement, _mm256_setzero_si256)
#undef DGRD_LANE_REGISTER
DGRD_LANE_FN LaneFloats operator+(LaneFloats a, LaneFloats b) { return {_mm256_add_ps(a.x, b.x)}; }
DGRD_LANE_FN LaneFloats operator-(LaneFloats a, LaneFloats b) { return {_mm256_sub_ps(a.x, b.x)}; }
DGRD_LANE_FN LaneFloats operator*(LaneFloats a, LaneFloats b) { return {_mm256_mul_ps(a.x, b.x)}; }
DGRD_LANE_FN LaneFloats operator/(LaneFloats a, LaneFloats b) { return {_mm256_div_ps(a.x, b.x)}; }
// Negation flips the sign bit, as GCC's vector negation does (NaN and zero included).
DGRD_LANE_FN LaneFloats operator-(LaneFloats a) {
  return {_mm256_xor_ps(a.x, _mm256_set1_ps(-0.0f))};
}
// Ordered, quiet comparisons: false where either side is NaN, as C's < and GCC's vectors.
#define DGRD_AVX_COMPARISON(op, predicate)                                     \
  DGRD_LANE_FN LaneInts operator op(LaneFloats a, LaneFloats b) {              \
    return {_mm256_castps_si256(_mm256_cmp_ps(a.x, b.x, predicate))};          \
  }
DGRD_AVX_COMPARISON(<, _CMP_LT_OQ)
DGRD_AVX_COMPARISON(<=, _CMP_LE_OQ)
DGRD_AVX_COMPARISON(>=, _CMP_GE_OQ)
DGRD_AVX_COMPARISON(>, _CMP_GT_OQ)
#undef DGRD_AVX_COMPARISON
DGRD_LANE_FN LaneInts operator+(LaneInts a, LaneInts b) { return {_mm256_add_epi32(a.x, b.x)}; }
DGRD_LANE_FN LaneInts operator-(LaneInts a, LaneInts b) { return {_mm256_sub_epi32(a.x, b.x)}; }
DGRD_LANE_FN LaneInts operator+(LaneInts a, int32_t s) {
  return {_mm256_add_epi32(a.x, _mm256_set1_epi32(s))};
}
DGRD_LANE_FN LaneInts operator*(LaneInts a, int32_t s) {
  return {_mm256_mullo_epi32(a.x, _mm256_set1_epi32(s))};
}
DGRD_LANE_FN LaneInts operator&(LaneInts a, LaneInts b) { return {_mm256_and_si256(a.x, b.x)}; }
DGRD_LANE_FN LaneInts operator|(LaneInts a, LaneInts b) { return {_mm256_or_si256(a.x, b.x)}; }
DGRD_LANE_FN LaneInts operator~(LaneInts a) {
  return {_mm256_xor_si256(a.x, _mm256_set1_epi32(-1))};
}
DGRD_LANE_FN LaneInts operator<(LaneInts a, LaneInts b) { return {_mm256_cmpgt_epi32(b.x, a.x)}; }
DGRD_LANE_FN LaneInts operator==(LaneInts a, LaneInts b) { return {_mm256_cmpeq_epi32(a.x, b.x)}; }
// Zero plus s, rounded in scalar as GCC's {} + s is in each lane: -0 becomes +0 in every form.
DGRD_LANE_FN LaneFloats lane_broadcast(float s) { return {_mm256_set1_ps(0.0f + s)}; }
DGRD_LANE_FN LaneFloats lane_load(const float* p) { return {_mm256_loadu_ps(p)}; }
DGRD_LANE_FN void lane_store(float* p, LaneFloats v) { _mm256_storeu_ps(p, v.x); }
DGRD_LANE_FN bool lanes_any(LaneInts m) { return !_mm256_testz_si256(m.x, m.x); }
DGRD_LANE_FN LaneInts lane_float_bits(LaneFloats v) { return {_mm256_castps_si256(v.x)}; }
DGRD_LANE_FN LaneFloats lane_bits_float(LaneInts v) { return {_mm256_castsi256_ps(v.x)}; }
DGRD_LANE_FN LaneFloats lane_select(LaneInts m, LaneFloats a, LaneFloats b) {
  return {_mm256_blendv_ps(b.x, a.x, _mm256_castsi256_ps(m.x))};
}
DGRD_LANE_FN LaneInts lane_select(LaneInts m, LaneInts a, LaneInts b) {
  return {_mm256_blendv_epi8(b.x, a.x, m.x)};
}
// The lanes of a and b numbered 0-7 and 8-15, picked by I: each source permuted across the
// register, then blended by which source each lane names.
template <int... I>
DGRD_LANE_FN LaneFloats lane_shuffle(LaneFloats a, LaneFloats b) {
  static_assert(sizeof...(I) == kLanes, "one index a lane");
  const __m256i index = _mm256_setr_epi32((I & (kLanes - 1))...);
  const __m256i from_b = _mm256_setr_epi32((I >= kLanes ? -1 : 0)...);
  return {_mm256_blendv_ps(_mm256_permutevar8x32_ps(a.x, index),
                           _mm256_permutevar8x32_ps(b.x, index), _mm256_castsi256_ps(from_b))};
}
#else
// Aligned to their full size on every target: without AVX, GCC gives a 32-byte vector only
// 16-byte alignment, while the AVX2 clone of a function stores it with aligned 32-byte moves.
using LaneFloats = float __attribute__((vector_size(kLanes * sizeof(float)), aligned(32)));
using LaneInts = int32_t __attribute__((vector_size(kLanes * sizeof(int32_t)), aligned(32)));
template <int... I>
DGRD_LANE_FN LaneFloats lane_shuffle(LaneFloats a, LaneFloats b) {
  return __builtin_shufflevector(a, b, I...);
}
#endif

#if !defined(DGRD_AVX2_LANES)
// What the AVX2 form spells as intrinsics, in terms of the operators and bytes.
DGRD_LANE_FN LaneFloats lane_broadcast(float s) { return LaneFloats{} + s; }
DGRD_LANE_FN LaneFloats lane_load(const float* p) {
  LaneFloats x;
  std::memcpy(&x, p, sizeof(x));
  return x;
}
DGRD_LANE_FN void lane_store(float* p, LaneFloats v) { std::memcpy(p, &v, sizeof(v)); }
#ifdef DGRD_PORTABLE_LANES
DGRD_LANE_FN bool lanes_any(LaneInts m) {
  int32_t acc = 0;
  for (int k = 0; k < kLanes; ++k) acc |= m.x[k];
  return acc != 0;
}
#else
// The two halves joined by one vector or, then tested as two 64-bit words. Written lane by
// lane, GCC moved all eight lanes to scalar registers one by one at every splat of the render
// loops: the garden's render forward was 1.2x slower for that alone.
DGRD_LANE_FN bool lanes_any(LaneInts m) {
  using Ints4 = int32_t __attribute__((vector_size(kLanes / 2 * sizeof(int32_t))));
  const Ints4 either = __builtin_shufflevector(m, m, 0, 1, 2, 3) |
                       __builtin_shufflevector(m, m, 4, 5, 6, 7);
  uint64_t words[2];
  std::memcpy(words, &either, sizeof(words));
  return (words[0] | words[1]) != 0;
}
#endif
// (memcpy here, not bits_as: a vector returned by a function that is not always inlined would
// change the ABI between the clones.)
DGRD_LANE_FN LaneInts lane_float_bits(LaneFloats v) {
  LaneInts b;
  std::memcpy(&b, &v, sizeof(b));
  return b;
}
DGRD_LANE_FN LaneFloats lane_bits_float(LaneInts b) {
  LaneFloats v;
  std::memcpy(&v, &b, sizeof(v));
  return v;
}
#endif

// A lane mask: all bits set (-1) where true, 0 where false, as vector comparisons produce.
struct LaneMask {
  LaneInts m;
  DGRD_LANE_FN bool any() const { return lanes_any(m); }
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
  DGRD_LANE_FN Lanes(float s) : v(lane_broadcast(s)) {}  // NOLINT: broadcasts like a float
  DGRD_LANE_FN explicit Lanes(LaneFloats x) : v(x) {}
  DGRD_LANE_FN static Lanes load(const float* p) { return Lanes(lane_load(p)); }
  DGRD_LANE_FN void store(float* p) const { lane_store(p, v); }
  DGRD_LANE_FN float operator[](int k) const { return v[k]; }
  DGRD_LANE_FN Lanes& operator+=(Lanes b) { v = v + b.v; return *this; }
  DGRD_LANE_FN Lanes& operator-=(Lanes b) { v = v - b.v; return *this; }
};
DGRD_LANE_FN Lanes operator+(Lanes a, Lanes b) { return Lanes(a.v + b.v); }
DGRD_LANE_FN Lanes operator-(Lanes a, Lanes b) { return Lanes(a.v - b.v); }
DGRD_LANE_FN Lanes operator*(Lanes a, Lanes b) { return Lanes(a.v * b.v); }
DGRD_LANE_FN Lanes operator/(Lanes a, Lanes b) { return Lanes(a.v / b.v); }
DGRD_LANE_FN Lanes operator-(Lanes a) { return Lanes(-a.v); }
#ifdef DGRD_NARROW_LANES
// Comparisons of each half of four, joined; selection by bits (a mask lane is all ones or
// all zeros). Measured on SSE2, garden 112k, 1 thread: forward 0.44 -> 0.28 s.
namespace lane_halves {
using Floats = float __attribute__((vector_size(kLanes / 2 * sizeof(float))));
using Ints = int32_t __attribute__((vector_size(kLanes / 2 * sizeof(int32_t))));
DGRD_LANE_FN Floats low(LaneFloats v) { return __builtin_shufflevector(v, v, 0, 1, 2, 3); }
DGRD_LANE_FN Floats high(LaneFloats v) { return __builtin_shufflevector(v, v, 4, 5, 6, 7); }
DGRD_LANE_FN LaneMask join(Ints l, Ints h) {
  return {__builtin_shufflevector(l, h, 0, 1, 2, 3, 4, 5, 6, 7)};
}
}  // namespace lane_halves
#define DGRD_LANE_COMPARISON(op)                                        \
  DGRD_LANE_FN LaneMask operator op(Lanes a, Lanes b) {                 \
    using namespace lane_halves;                                        \
    return join(low(a.v) op low(b.v), high(a.v) op high(b.v));          \
  }
DGRD_LANE_COMPARISON(<)
DGRD_LANE_COMPARISON(<=)
DGRD_LANE_COMPARISON(>=)
DGRD_LANE_COMPARISON(>)
#undef DGRD_LANE_COMPARISON
DGRD_LANE_FN LaneMask lanes_less(LaneInts a, LaneInts b) {
  using namespace lane_halves;
  const Ints a0 = __builtin_shufflevector(a, a, 0, 1, 2, 3), a1 = __builtin_shufflevector(a, a, 4, 5, 6, 7);
  const Ints b0 = __builtin_shufflevector(b, b, 0, 1, 2, 3), b1 = __builtin_shufflevector(b, b, 4, 5, 6, 7);
  return join(a0 < b0, a1 < b1);
}
DGRD_LANE_FN LaneMask lanes_equal(LaneInts a, LaneInts b) {
  using namespace lane_halves;
  const Ints a0 = __builtin_shufflevector(a, a, 0, 1, 2, 3), a1 = __builtin_shufflevector(a, a, 4, 5, 6, 7);
  const Ints b0 = __builtin_shufflevector(b, b, 0, 1, 2, 3), b1 = __builtin_shufflevector(b, b, 4, 5, 6, 7);
  return join(a0 == b0, a1 == b1);
}

DGRD_LANE_FN LaneInts select(LaneMask m, LaneInts a, LaneInts b) { return (m.m & a) | (~m.m & b); }
DGRD_LANE_FN Lanes select(LaneMask m, Lanes a, Lanes b) {
  return Lanes(lane_bits_float(select(m, lane_float_bits(a.v), lane_float_bits(b.v))));
}
#else
// One instruction each in the AVX2 and AVX-512 clones (the forms above cost them 10-30%).
DGRD_LANE_FN LaneMask operator<(Lanes a, Lanes b) { return {a.v < b.v}; }
DGRD_LANE_FN LaneMask operator<=(Lanes a, Lanes b) { return {a.v <= b.v}; }
DGRD_LANE_FN LaneMask operator>=(Lanes a, Lanes b) { return {a.v >= b.v}; }
DGRD_LANE_FN LaneMask operator>(Lanes a, Lanes b) { return {a.v > b.v}; }

DGRD_LANE_FN LaneMask lanes_less(LaneInts a, LaneInts b) { return {a < b}; }
DGRD_LANE_FN LaneMask lanes_equal(LaneInts a, LaneInts b) { return {a == b}; }

#ifdef DGRD_PORTABLE_LANES
template <typename E>
DGRD_LANE_FN LaneArray<E> select(LaneMask m, LaneArray<E> a, LaneArray<E> b) {
  for (int k = 0; k < kLanes; ++k) a.x[k] = m.m.x[k] ? a.x[k] : b.x[k];
  return a;
}
DGRD_LANE_FN Lanes select(LaneMask m, Lanes a, Lanes b) { return Lanes(select(m, a.v, b.v)); }
#elif defined(DGRD_AVX2_LANES)
DGRD_LANE_FN Lanes select(LaneMask m, Lanes a, Lanes b) {
  return Lanes(lane_select(m.m, a.v, b.v));
}
DGRD_LANE_FN LaneInts select(LaneMask m, LaneInts a, LaneInts b) { return lane_select(m.m, a, b); }
#else
DGRD_LANE_FN Lanes select(LaneMask m, Lanes a, Lanes b) { return Lanes(m.m ? a.v : b.v); }
DGRD_LANE_FN LaneInts select(LaneMask m, LaneInts a, LaneInts b) { return m.m ? a : b; }
#endif
#endif
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
DGRD_LANE_FN LaneBits float_bits(Lanes a) { return {lane_float_bits(a.v)}; }
DGRD_LANE_FN Lanes bits_float(LaneBits b) { return Lanes(lane_bits_float(b.v)); }
DGRD_LANE_FN Lanes zero_unless(LaneMask m, Lanes a) { return select(m, a, Lanes(0.f)); }

// The splat exponential on lanes: the same polynomial as for one float (fast_exp.h).
DGRD_LANE_FN Lanes host_splat_exp(Lanes power) { return exp_poly(power); }

}  // namespace dgrd
