// Small vector and matrix types of our own (no glm), usable from host and device code.
#pragma once

#include <cmath>
#include <cstddef>
#include <type_traits>

#include "config.h"

namespace dgrd {

// Vec2 and Vec4 of a number are aligned to their size so that they load as one vector
// instruction; of the CPU's lanes (cpu_lanes.h), to the lanes' own alignment, since MSVC refuses
// a by-value parameter aligned to 128 bytes (a Vec4 of eight floats).
template <typename T>
constexpr std::size_t vec_alignment(std::size_t count) {
  return std::is_arithmetic<T>::value ? count * sizeof(T) : alignof(T);
}

template <typename T>
struct alignas(vec_alignment<T>(2)) Vec2 {
  T x, y;
};

template <typename T>
struct Vec3 {
  T x, y, z;
};

template <typename T>
struct alignas(vec_alignment<T>(4)) Vec4 {
  T x, y, z, w;
};

// Symmetric 2x2 matrix [[a, b], [b, c]]. Gradients with respect to one use the same type,
// with b holding the derivative with respect to the single off-diagonal parameter.
template <typename T>
struct Sym2 {
  T a, b, c;
};

// Symmetric 3x3 matrix stored as the upper triangle (xx, xy, xz, yy, yz, zz), the layout of
// cov3D_precomp. As a gradient, off-diagonal entries hold d/d(parameter), i.e. both halves.
template <typename T>
struct Sym3 {
  T xx, xy, xz, yy, yz, zz;
};

// Dense 3x3, row-major: m[row][col].
template <typename T>
struct Mat3 {
  T m[3][3];
};

template <typename T> DGRD_HD Vec3<T> operator+(Vec3<T> a, Vec3<T> b) { return {a.x + b.x, a.y + b.y, a.z + b.z}; }
template <typename T> DGRD_HD Vec3<T> operator-(Vec3<T> a, Vec3<T> b) { return {a.x - b.x, a.y - b.y, a.z - b.z}; }
template <typename T> DGRD_HD Vec3<T> operator*(T s, Vec3<T> a) { return {s * a.x, s * a.y, s * a.z}; }
template <typename T> DGRD_HD T dot(Vec3<T> a, Vec3<T> b) { return a.x * b.x + a.y * b.y + a.z * b.z; }

// Scalar functions that pick the device overloads under nvcc and std:: on the host.
#if defined(__CUDA_ARCH__)
#define DGRD_SCALAR_FN(name, fn) \
  template <typename T> DGRD_HD T name(T v) { return ::fn(v); }
#else
#define DGRD_SCALAR_FN(name, fn) \
  template <typename T> DGRD_HD T name(T v) { return std::fn(v); }
#endif
DGRD_SCALAR_FN(exp_, exp)
DGRD_SCALAR_FN(exp2_, exp2)
DGRD_SCALAR_FN(sqrt_, sqrt)
DGRD_SCALAR_FN(ceil_, ceil)
DGRD_SCALAR_FN(floor_, floor)
DGRD_SCALAR_FN(log_, log)
DGRD_SCALAR_FN(expm1_, expm1)
DGRD_SCALAR_FN(log1p_, log1p)
DGRD_SCALAR_FN(atan_, atan)
#undef DGRD_SCALAR_FN

// a * b + c rounded once.
template <typename T> DGRD_HD T fma_(T a, T b, T c) {
#if defined(__CUDA_ARCH__)
  return ::fma(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

template <typename T> DGRD_HD bool is_finite(T v) {
#if defined(__CUDA_ARCH__)
  return ::isfinite(v);
#else
  return std::isfinite(v);
#endif
}
template <typename T> DGRD_HD bool is_finite(Vec2<T> v) { return is_finite(v.x) && is_finite(v.y); }
template <typename T> DGRD_HD bool is_finite(Vec3<T> v) { return is_finite(v.x) && is_finite(v.y) && is_finite(v.z); }

// Unit roundoff of T (half the machine epsilon).
template <typename T> DGRD_HD T unit_roundoff() {
  return T(sizeof(T) == sizeof(float) ? 5.9604644775390625e-8 : 1.1102230246251565e-16);
}

template <typename T> DGRD_HD T clamp(T v, T lo, T hi) { return v < lo ? lo : (v > hi ? hi : v); }
template <typename T> DGRD_HD T min2(T a, T b) { return a < b ? a : b; }
template <typename T> DGRD_HD T max2(T a, T b) { return a > b ? a : b; }
// a where m holds, else b (else 0): masked math written once for a single pixel, where m is a
// bool, and for the CPU's lanes, whose overloads take a lane mask (cpu_lanes.h).
template <typename T> DGRD_HD T select(bool m, T a, T b) { return m ? a : b; }
template <typename T> DGRD_HD T zero_unless(bool m, T a) { return m ? a : T(0); }

template <typename T>
DGRD_HD Mat3<T> transpose(const Mat3<T>& a) {
  Mat3<T> r;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) r.m[i][j] = a.m[j][i];
  return r;
}

template <typename T>
DGRD_HD Mat3<T> matmul(const Mat3<T>& a, const Mat3<T>& b) {
  Mat3<T> r;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) r.m[i][j] = a.m[i][0] * b.m[0][j] + a.m[i][1] * b.m[1][j] + a.m[i][2] * b.m[2][j];
  return r;
}

template <typename T>
DGRD_HD Mat3<T> to_dense(const Sym3<T>& s) {
  return {{{s.xx, s.xy, s.xz}, {s.xy, s.yy, s.yz}, {s.xz, s.yz, s.zz}}};
}

template <typename T>
DGRD_HD Vec3<T> matvec(const Mat3<T>& a, Vec3<T> v) {
  return {a.m[0][0] * v.x + a.m[0][1] * v.y + a.m[0][2] * v.z,
          a.m[1][0] * v.x + a.m[1][1] * v.y + a.m[1][2] * v.z,
          a.m[2][0] * v.x + a.m[2][1] * v.y + a.m[2][2] * v.z};
}

template <typename T>
DGRD_HD Vec3<T> matvec_transposed(const Mat3<T>& a, Vec3<T> v) {
  return {a.m[0][0] * v.x + a.m[1][0] * v.y + a.m[2][0] * v.z,
          a.m[0][1] * v.x + a.m[1][1] * v.y + a.m[2][1] * v.z,
          a.m[0][2] * v.x + a.m[1][2] * v.y + a.m[2][2] * v.z};
}

}  // namespace dgrd
