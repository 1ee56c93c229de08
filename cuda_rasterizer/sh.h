// Spherical-harmonics colour of a Gaussian seen from the camera (degrees 0..3) and its backward.
#pragma once

#include "vector_math.h"

namespace dgrd {

// Real SH basis in the order of the original 3DGS, evaluated at a unit direction; optionally
// the gradient of each basis function with respect to the direction. Returns the number of
// coefficients used, (degree + 1)^2.
template <typename T>
DGRD_HD int sh_basis(int degree, Vec3<T> dir, T basis[kMaxShCoeffs], Vec3<T>* dbasis) {
  const T C0 = T(0.28209479177387814);
  const T C1 = T(0.4886025119029199);
  const T C2[5] = {T(1.0925484305920792), T(-1.0925484305920792), T(0.31539156525252005),
                   T(-1.0925484305920792), T(0.5462742152960396)};
  const T C3[7] = {T(-0.5900435899266435), T(2.890611442640554), T(-0.4570457994644658),
                   T(0.3731763325901154), T(-0.4570457994644658), T(1.445305721320277),
                   T(-0.5900435899266435)};
  const T x = dir.x, y = dir.y, z = dir.z;
  const T zero = T(0);
  basis[0] = C0;
  if (dbasis) dbasis[0] = {zero, zero, zero};
  if (degree < 1) return 1;

  basis[1] = -C1 * y;
  basis[2] = C1 * z;
  basis[3] = -C1 * x;
  if (dbasis) {
    dbasis[1] = {zero, -C1, zero};
    dbasis[2] = {zero, zero, C1};
    dbasis[3] = {-C1, zero, zero};
  }
  if (degree < 2) return 4;

  const T xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
  basis[4] = C2[0] * xy;
  basis[5] = C2[1] * yz;
  basis[6] = C2[2] * (T(2) * zz - xx - yy);
  basis[7] = C2[3] * xz;
  basis[8] = C2[4] * (xx - yy);
  if (dbasis) {
    dbasis[4] = {C2[0] * y, C2[0] * x, zero};
    dbasis[5] = {zero, C2[1] * z, C2[1] * y};
    dbasis[6] = {T(-2) * C2[2] * x, T(-2) * C2[2] * y, T(4) * C2[2] * z};
    dbasis[7] = {C2[3] * z, zero, C2[3] * x};
    dbasis[8] = {T(2) * C2[4] * x, T(-2) * C2[4] * y, zero};
  }
  if (degree < 3) return 9;

  basis[9] = C3[0] * y * (T(3) * xx - yy);
  basis[10] = C3[1] * xy * z;
  basis[11] = C3[2] * y * (T(4) * zz - xx - yy);
  basis[12] = C3[3] * z * (T(2) * zz - T(3) * xx - T(3) * yy);
  basis[13] = C3[4] * x * (T(4) * zz - xx - yy);
  basis[14] = C3[5] * z * (xx - yy);
  basis[15] = C3[6] * x * (xx - T(3) * yy);
  if (dbasis) {
    dbasis[9] = {C3[0] * T(6) * xy, C3[0] * T(3) * (xx - yy), zero};
    dbasis[10] = {C3[1] * yz, C3[1] * xz, C3[1] * xy};
    dbasis[11] = {C3[2] * T(-2) * xy, C3[2] * (T(4) * zz - xx - T(3) * yy), C3[2] * T(8) * yz};
    dbasis[12] = {C3[3] * T(-6) * xz, C3[3] * T(-6) * yz,
                  C3[3] * (T(6) * zz - T(3) * xx - T(3) * yy)};
    dbasis[13] = {C3[4] * (T(4) * zz - T(3) * xx - yy), C3[4] * T(-2) * xy, C3[4] * T(8) * xz};
    dbasis[14] = {C3[5] * T(2) * xz, C3[5] * T(-2) * yz, C3[5] * (xx - yy)};
    dbasis[15] = {C3[6] * T(3) * (xx - yy), C3[6] * T(-6) * xy, zero};
  }
  return 16;
}

// One Gaussian's SH coefficients, 3 values each: coefficient 0 (the DC term) at `dc`, the others
// from `rest` on. The package's call gives them as one tensor (rest = dc + 3); the 2024 API gives
// dc and the rest as two, and reading them where they lie spares a copy of every coefficient.
template <typename T>
struct ShCoeffs {
  T* dc;
  T* rest;
  DGRD_HD T* coeff(int k) const { return k == 0 ? dc : rest + 3 * (k - 1); }
};

// Gaussian i's coefficients among `count` a Gaussian: from `dc` (P x 3) and `rest`
// (P x (count - 1) x 3) when dc is given apart, else all from `rest` (P x count x 3).
template <typename T>
DGRD_HD ShCoeffs<T> sh_coeffs_of(T* dc, T* rest, int count, int64_t i) {
  if (dc) return {dc + 3 * i, rest ? rest + 3 * (count - 1) * i : nullptr};
  T* first = rest + 3 * count * i;
  return {first, first + 3};
}

// Unit view direction from the camera centre to the Gaussian, and the length it had.
template <typename T>
DGRD_HD Vec3<T> view_direction(Vec3<T> mean, const T* campos, T& length) {
  const Vec3<T> v = {mean.x - campos[0], mean.y - campos[1], mean.z - campos[2]};
  length = sqrt_(dot(v, v));
  return (T(1) / length) * v;
}

// sum_k basis_k sh_k + 0.5, before the clamp at 0.
template <typename T>
DGRD_HD Vec3<T> sh_raw_color(int n, const T* basis, ShCoeffs<const T> sh) {
  Vec3<T> rgb = {T(0), T(0), T(0)};
  for (int k = 0; k < n; ++k) {
    const T* c = sh.coeff(k);
    rgb.x += basis[k] * c[0];
    rgb.y += basis[k] * c[1];
    rgb.z += basis[k] * c[2];
  }
  return rgb + Vec3<T>{T(0.5), T(0.5), T(0.5)};
}

// Colour = sum_k basis_k sh_k + 0.5, clamped below at 0 (a clamped channel passes no gradient).
template <typename T>
DGRD_HD Vec3<T> sh_to_color(int degree, Vec3<T> mean, const T* campos, ShCoeffs<const T> sh) {
  T length;
  const Vec3<T> dir = view_direction(mean, campos, length);
  T basis[kMaxShCoeffs];
  const int n = sh_basis<T>(degree, dir, basis, nullptr);
  const Vec3<T> rgb = sh_raw_color(n, basis, sh);
  if (!is_finite(rgb)) return rgb;  // NaN or -inf must reach the cull, not vanish in the clamp
  return {rgb.x < T(0) ? T(0) : rgb.x, rgb.y < T(0) ? T(0) : rgb.y, rgb.z < T(0) ? T(0) : rgb.z};
}

// Backward of sh_to_color: writes d/d(sh) of the n coefficients used and returns d/d(mean)
// through the direction.
template <typename T>
DGRD_HD Vec3<T> sh_to_color_backward(int degree, Vec3<T> mean, const T* campos,
                                     ShCoeffs<const T> sh, Vec3<T> drgb, ShCoeffs<T> dsh) {
  T length;
  const Vec3<T> dir = view_direction(mean, campos, length);
  T basis[kMaxShCoeffs];
  Vec3<T> dbasis[kMaxShCoeffs];
  const int n = sh_basis<T>(degree, dir, basis, dbasis);
  const Vec3<T> rgb = sh_raw_color(n, basis, sh);
  const Vec3<T> g = {rgb.x < T(0) ? T(0) : drgb.x, rgb.y < T(0) ? T(0) : drgb.y,
                     rgb.z < T(0) ? T(0) : drgb.z};
  Vec3<T> ddir = {T(0), T(0), T(0)};
  for (int k = 0; k < n; ++k) {
    T* dcoeff = dsh.coeff(k);
    dcoeff[0] = basis[k] * g.x;
    dcoeff[1] = basis[k] * g.y;
    dcoeff[2] = basis[k] * g.z;
    const T* c = sh.coeff(k);
    const Vec3<T> shk = {c[0], c[1], c[2]};
    ddir = ddir + dot(shk, g) * dbasis[k];
  }
  // d(v / |v|)/dv = (I - dir dir^T) / |v|
  return (T(1) / length) * (ddir - dot(dir, ddir) * dir);
}

}  // namespace dgrd
