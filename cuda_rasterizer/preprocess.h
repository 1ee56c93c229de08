// Per-Gaussian math (SPEC 4): projection, 3D and 2D covariance, conic, radius, tiles, colour,
// and the exact backward of each. One thread (CUDA) or loop iteration (CPU) per Gaussian.
#pragma once

#include <cstdint>
#include <cstring>

#include "vector_math.h"
#include "blend.h"  // reach_rect: the binning takes the tiles of the render's own reach box
#include "sh.h"
#include "types.h"

namespace dgrd {

// ---------------------------------------------------------------- projection of the mean

template <typename T>
DGRD_HD Vec3<T> load3(const T* p, int i) { return {p[3 * i], p[3 * i + 1], p[3 * i + 2]}; }

// Column `col` of [p, 1] @ M for a 4x4 M stored row-major (the transposed layout of SPEC 4).
template <typename T>
DGRD_HD T affine_column(const T* M, Vec3<T> p, int col) {
  return p.x * M[col] + p.y * M[4 + col] + p.z * M[8 + col] + M[12 + col];
}

template <typename T>
DGRD_HD Vec3<T> to_view(const T* viewmatrix, Vec3<T> p) {
  return {affine_column(viewmatrix, p, 0), affine_column(viewmatrix, p, 1),
          affine_column(viewmatrix, p, 2)};
}

// The world-to-view rotation acting on column vectors: Wr[j][i] = viewmatrix[4 i + j].
template <typename T>
DGRD_HD Mat3<T> view_rotation(const T* V) {
  return {{{V[0], V[4], V[8]}, {V[1], V[5], V[9]}, {V[2], V[6], V[10]}}};
}

// Computed in double as the original does, so pixel positions match it bit for bit.
template <typename T>
DGRD_HD T ndc_to_pixel(T v, int size) {
  return T(((double(v) + 1.0) * size - 1.0) * 0.5);
}

// Screen position in pixels; also returns 1 / (hom.w + eps) and hom for the backward.
template <typename T>
DGRD_HD Vec2<T> project_mean(const Camera<T>& cam, Vec3<T> mean, T& inv_w, Vec3<T>& hom) {
  const T* M = cam.projmatrix;
  hom = {affine_column(M, mean, 0), affine_column(M, mean, 1), affine_column(M, mean, 2)};
  inv_w = T(1) / (affine_column(M, mean, 3) + T(kHomEps));
  return {ndc_to_pixel(hom.x * inv_w, cam.width), ndc_to_pixel(hom.y * inv_w, cam.height)};
}

// d(ndc.x, ndc.y)/d(mean) applied to dndc.
template <typename T>
DGRD_HD Vec3<T> project_mean_backward(const Camera<T>& cam, Vec3<T> mean, Vec2<T> dndc) {
  T inv_w;
  Vec3<T> hom;
  project_mean(cam, mean, inv_w, hom);
  const T* M = cam.projmatrix;
  const T ndc_x = hom.x * inv_w, ndc_y = hom.y * inv_w;
  // ndc.x = hom.x / (hom.w + eps): d/dp_i = (M[i][0] - ndc.x M[i][3]) / (hom.w + eps)
  Vec3<T> d;
  T* out[3] = {&d.x, &d.y, &d.z};
  for (int i = 0; i < 3; ++i) {
    const T* row = M + 4 * i;
    *out[i] = inv_w * (dndc.x * (row[0] - ndc_x * row[3]) + dndc.y * (row[1] - ndc_y * row[3]));
  }
  return d;
}

// d(ndc.x, ndc.y)/d(projmatrix) applied to dndc, written into dproj (16). Only columns 0, 1 and
// 3 of [mean, 1] @ projmatrix reach the screen, so column 2 gets zero.
template <typename T>
DGRD_HD void projection_matrix_backward(const Camera<T>& cam, Vec3<T> mean, Vec2<T> dndc,
                                        T dproj[16]) {
  T inv_w;
  Vec3<T> hom;
  project_mean(cam, mean, inv_w, hom);
  const T dhom[4] = {dndc.x * inv_w, dndc.y * inv_w, T(0),
                     -(dndc.x * (hom.x * inv_w) + dndc.y * (hom.y * inv_w)) * inv_w};
  const T point[4] = {mean.x, mean.y, mean.z, T(1)};
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 4; ++c) dproj[4 * r + c] = point[r] * dhom[c];
}

// From d/d(t) and d/d(Wr), the gradient of the view rotation in J Wr Sigma Wr^T J^T, to
// d/d(viewmatrix) (16): t = [mean, 1] @ V and Wr[j][i] = V[4 i + j]. Column 3 is never read.
template <typename T>
DGRD_HD void view_matrix_backward(Vec3<T> mean, Vec3<T> dt, const Mat3<T>& dWr, T dview[16]) {
  const T point[4] = {mean.x, mean.y, mean.z, T(1)};
  const T dtv[3] = {dt.x, dt.y, dt.z};
  for (int r = 0; r < 4; ++r) {
    for (int c = 0; c < 3; ++c)
      dview[4 * r + c] = point[r] * dtv[c] + (r < 3 ? dWr.m[c][r] : T(0));
    dview[4 * r + 3] = T(0);
  }
}

// ---------------------------------------------------------------- the lens projections

// The fisheye and the distorted pinhole (Camera::lens) put the view-space point t = z (a, b, 1)
// at c + focal (a K + tau_x, b K + tau_y): K a function of u = a^2 + b^2 (the radial part),
// tau the distorted pinhole's tangential terms (0 for the fisheye). LensTerms holds K and its
// derivatives, with the same meaning for every lens: M = 2 dK/du, P = 2 dM/du,
// N = -(K + u M) (z / a times J02 without tau), Q = 2 dN/du = -(3 M + u P), R = -(2 N + u Q).
//
// The equidistant fisheye (Camera::fisheye): the view-space point t = z (a, b, 1) lands at
// c + (focal_x a, focal_y b) K, K = theta / s with s = |(a, b)| = tan(theta) and theta the
// angle off the axis. Every term is a function of u = s^2 times a power of 1/z, so that no
// product overflows before it is scaled (a point far off the axis lands on the image's rim,
// finite):
//   K = atan(s) / s,  M = (1 / (1 + u) - K) / u = K' / s,  P = -(2 / (1 + u)^2 + 3 M) / u,
//   N = -1 / (1 + u),  Q = 2 / (1 + u)^2.
// The Jacobian of the pixel by t is (focal / z) [[K + a^2 M, a b M, a N], [a b M, K + b^2 M, b N]]
// and its derivatives by t are (focal / z^2) times products of a, b with M, P, N, Q, R
// (lens_jacobian_backward; R = -(2 N + u Q), which equals Q but for a distorted fisheye).
// Near the axis K, M and P come from their series in u: the closed forms lose their digits to
// cancellation there (M to 1/u, P to 1/u^2).
template <typename T>
struct LensTerms {
  T a, b;           // t.x / t.z, t.y / t.z
  T inv_z;
  T K, M, P, N, Q;
  T R;              // -(2 N + u Q): (z^2 / a) d(a N / z)/dz, Q itself for the equidistant fisheye
  // The distorted pinhole's tangential offset tau and its derivatives by (a, b): T00 =
  // d tau_x / da, T01 = d tau_x / db = d tau_y / da, T11 = d tau_y / db. 0 for the fisheye.
  Vec2<T> tau;
  T T00, T01, T11;
};

// OpenCV's distortion (Camera::fisheye_distorted) scales theta by D(w) = 1 + k1 w + k2 w^2 +
// k3 w^3 + k4 w^4, w = theta^2: K = theta D / s. The other terms keep their definitions (M =
// 2 dK/du, P = 2 dM/du, N = -(d theta_d / d theta) / (1 + u), Q = 2 dN/du) and come from the
// undistorted ones (K0, M0, P0) and D, D' = dD/dw, D'' with dw/du = K0 / (1 + u):
//   K = D K0,  M = D M0 + 2 K0^2 D' / (1 + u),  N = -(D + 2 w D') / (1 + u),
//   Q = (2 (D + 2 w D') - G) / (1 + u)^2,  R = (2 (D + 2 w D') + u G) / (1 + u)^2,
//   P = D P0 + 6 K0 M0 D' / (1 + u) + 4 K0^2 (K0 D'' - D') / (1 + u)^2,
// with G = K0 (6 D' + 4 w D'') (theta_d'' / s). No term divides by u, so they hold their
// digits on the axis as the undistorted ones do, nor subtracts terms of 1/u far off it.
template <typename T>
DGRD_HD void distort_fisheye_terms(const T (&k)[4], T u, T inv_1u, LensTerms<T>& f) {
  const T K0 = f.K, M0 = f.M, w = u * K0 * K0;
  const T D = T(1) + w * (k[0] + w * (k[1] + w * (k[2] + w * k[3])));
  const T D1 = k[0] + w * (T(2) * k[1] + w * (T(3) * k[2] + w * (T(4) * k[3])));
  const T D2 = T(2) * k[1] + w * (T(6) * k[2] + w * (T(12) * k[3]));
  const T slope = D + T(2) * w * D1;  // d theta_d / d theta
  f.K = D * K0;
  f.M = D * M0 + T(2) * K0 * K0 * D1 * inv_1u;
  f.N = -slope * inv_1u;
  const T G = K0 * (T(6) * D1 + T(4) * w * D2);
  f.Q = (T(2) * slope - G) * inv_1u * inv_1u;
  f.R = (T(2) * slope + u * G) * inv_1u * inv_1u;
  f.P = D * f.P + T(6) * K0 * M0 * D1 * inv_1u + T(4) * K0 * K0 * (K0 * D2 - D1) * inv_1u * inv_1u;
}

// The equidistant terms (no distortion).
template <typename T>
DGRD_HD LensTerms<T> equidistant_terms(Vec3<T> t) {
  LensTerms<T> f;
  f.tau = {T(0), T(0)};
  f.T00 = f.T01 = f.T11 = T(0);
  f.inv_z = T(1) / t.z;
  f.a = t.x * f.inv_z;
  f.b = t.y * f.inv_z;
  const T u = f.a * f.a + f.b * f.b;
  const T inv_1u = T(1) / (T(1) + u);
  f.N = -inv_1u;
  f.Q = T(2) * inv_1u * inv_1u;
  f.R = f.Q;
  if (u < T(kFisheyeSeriesBound)) {
    // K = sum (-1)^i u^i / (2i + 1), M = sum (-1)^(i+1) 2 (i + 1) u^i / (2i + 3),
    // P = sum (-1)^i 4 (i + 1) (i + 2) u^i / (2i + 5), by Horner's rule from the last term
    f.K = f.M = f.P = T(0);
    for (int i = kFisheyeSeriesTerms - 1; i >= 0; --i) {
      const T sign = (i % 2 == 0) ? T(1) : T(-1);
      f.K = f.K * u + sign / T(2 * i + 1);
      f.M = f.M * u - sign * T(2 * (i + 1)) / T(2 * i + 3);
      f.P = f.P * u + sign * T(4 * (i + 1) * (i + 2)) / T(2 * i + 5);
    }
  } else {
    const T s = sqrt_(u);
    f.K = atan_(s) / s;
    f.M = (inv_1u - f.K) / u;
    f.P = -(f.Q + T(3) * f.M) / u;
  }
  return f;
}

// The rational radial factor of OpenCV's pinhole distortion, L(u) = n(u) / d(u) with
// n = 1 + k1 u + k2 u^2 + k3 u^3, d = 1 + k4 u + k5 u^2 + k6 u^3 (k = Camera::pinhole_k), and
// its derivatives by u: L' = (n' - L d') / d, L'' = (n'' - 2 L' d' - L d'') / d.
template <typename T>
struct RadialFactor {
  T L, L1, L2;  // L, L', L''
  T inv_d;      // 1 / d
  T d1;         // d'
};

template <typename T>
DGRD_HD RadialFactor<T> pinhole_radial_factor(const T (&k)[kLensCoefficients], T u) {
  const T k1 = k[0], k2 = k[1], k3 = k[4], k4 = k[5], k5 = k[6], k6 = k[7];
  RadialFactor<T> r;
  r.inv_d = T(1) / (T(1) + u * (k4 + u * (k5 + u * k6)));
  r.d1 = k4 + u * (T(2) * k5 + u * (T(3) * k6));
  const T d2 = T(2) * k5 + u * (T(6) * k6);
  r.L = (T(1) + u * (k1 + u * (k2 + u * k3))) * r.inv_d;
  r.L1 = (k1 + u * (T(2) * k2 + u * (T(3) * k3)) - r.L * r.d1) * r.inv_d;
  r.L2 = (T(2) * k2 + u * (T(6) * k3) - T(2) * r.L1 * r.d1 - r.L * d2) * r.inv_d;
  return r;
}

// OpenCV's pinhole distortion (Camera::pinhole_distorted, k = (k1, k2, p1, p2, k3, k4, k5,
// k6)): the radial factor L (pinhole_radial_factor) is K, so M = 2 L', P = 4 L'' and N, Q, R
// by their definitions (no term divides by u: nothing to lose on the axis); tau = (2 p1 a b +
// p2 (u + 2 a^2), p1 (u + 2 b^2) + 2 p2 a b), homogeneous of degree 2 in (a, b).
template <typename T>
DGRD_HD LensTerms<T> pinhole_lens_terms(const T (&k)[kLensCoefficients], Vec3<T> t) {
  LensTerms<T> f;
  f.inv_z = T(1) / t.z;
  const T a = t.x * f.inv_z, b = t.y * f.inv_z;
  f.a = a;
  f.b = b;
  const T u = a * a + b * b, p1 = k[2], p2 = k[3];
  const RadialFactor<T> r = pinhole_radial_factor(k, u);
  f.K = r.L;
  f.M = T(2) * r.L1;
  f.P = T(4) * r.L2;
  f.N = -(f.K + u * f.M);
  f.Q = -(T(3) * f.M + u * f.P);
  f.R = -(T(2) * f.N + u * f.Q);
  f.tau = {T(2) * p1 * a * b + p2 * (u + T(2) * a * a),
           p1 * (u + T(2) * b * b) + T(2) * p2 * a * b};
  f.T00 = T(2) * p1 * b + T(6) * p2 * a;
  f.T01 = T(2) * (p1 * a + p2 * b);
  f.T11 = T(6) * p1 * b + T(2) * p2 * a;
  return f;
}

template <typename T>
DGRD_HD LensTerms<T> lens_terms(const Camera<T>& cam, Vec3<T> t) {
  if (cam.pinhole_distorted) return pinhole_lens_terms(cam.pinhole_k, t);
  LensTerms<T> f = equidistant_terms(t);
  if (cam.fisheye_distorted) {
    const T u = f.a * f.a + f.b * f.b;
    distort_fisheye_terms(cam.fisheye_k, u, T(1) / (T(1) + u), f);
  }
  return f;
}

// d/d(the lens coefficients) of the pixel position and Jacobian at t (CameraGrad::distortion),
// from the loss's d/d(pixel) (dpixel) and d/d(J) (dJ, J before the view rotation). The pixel is
// c + focal (a K + tau_x, b K + tau_y) and J's rows are (focal / z) (K + a^2 M + T00,
// a b M + T01, a N - 2 tau_x) and (focal / z) (a b M + T01, K + b^2 M + T11, b N - 2 tau_y)
// (lens_jacobian): a coefficient's gradient is the dot of those with the change of K, M, N
// (a radial coefficient) or of tau (a tangential one) that it makes.
//   Fisheye, with p_j = w^(j+1), by distort_fisheye_terms: dK/dk_j = K0 p_j,
//     dM/dk_j = M0 p_j + 2 K0^2 (j + 1) w^j / (1 + u), dN/dk_j = -(2 j + 3) p_j / (1 + u).
//   Pinhole (L = n / d, pinhole_radial_factor), numerator's k_j (j = 1, 2, 3): dL = u^j / d,
//     dL' = (j u^(j-1) - dL d') / d; denominator's k_(3+j): dL = -L u^j / d,
//     dL' = -(j u^(j-1) L + u^j L' + dL d') / d; then dK = dL, dM = 2 dL', dN = -(dK + u dM).
//     Tangential: d tau/d p1 = (2 a b, u + 2 b^2), d tau/d p2 = (u + 2 a^2, 2 a b).
template <typename T>
DGRD_HD void lens_distortion_backward(const Camera<T>& cam, Vec3<T> t, Vec2<T> dpixel,
                                      const T (&dJ)[2][3], T dk[kLensCoefficients]) {
  const T inv_z = T(1) / t.z, a = t.x * inv_z, b = t.y * inv_z, u = a * a + b * b;
  const T gx = cam.focal_x * inv_z, gy = cam.focal_y * inv_z;
  const auto radial = [&](T dK, T dM, T dN) {
    return gx * (dJ[0][0] * (dK + a * a * dM) + dJ[0][1] * a * b * dM + dJ[0][2] * a * dN) +
           gy * (dJ[1][0] * a * b * dM + dJ[1][1] * (dK + b * b * dM) + dJ[1][2] * b * dN) +
           dpixel.x * cam.focal_x * a * dK + dpixel.y * cam.focal_y * b * dK;
  };
  const auto tangential = [&](Vec2<T> dtau, T dT00, T dT01, T dT11) {
    return gx * (dJ[0][0] * dT00 + dJ[0][1] * dT01 - T(2) * dJ[0][2] * dtau.x) +
           gy * (dJ[1][0] * dT01 + dJ[1][1] * dT11 - T(2) * dJ[1][2] * dtau.y) +
           dpixel.x * cam.focal_x * dtau.x + dpixel.y * cam.focal_y * dtau.y;
  };
  for (int j = 0; j < kLensCoefficients; ++j) dk[j] = T(0);
  if (cam.pinhole_distorted) {
    const RadialFactor<T> r = pinhole_radial_factor(cam.pinhole_k, u);
    const auto radial_by_L = [&](T dL, T dL1) {
      const T dM = T(2) * dL1;
      return radial(dL, dM, -(dL + u * dM));
    };
    constexpr int kNumerator[3] = {0, 1, 4}, kDenominator[3] = {5, 6, 7};  // k1-k3, k4-k6
    T power = T(1);  // u^(j-1)
    for (int j = 1; j <= 3; ++j) {
      const T uj = power * u;
      const T dL_n = uj * r.inv_d;
      dk[kNumerator[j - 1]] = radial_by_L(dL_n, (T(j) * power - dL_n * r.d1) * r.inv_d);
      const T dL_d = -r.L * dL_n;
      dk[kDenominator[j - 1]] =
          radial_by_L(dL_d, -(T(j) * power * r.L + uj * r.L1 + dL_d * r.d1) * r.inv_d);
      power = uj;
    }
    dk[2] = tangential({T(2) * a * b, u + T(2) * b * b}, T(2) * b, T(2) * a, T(6) * b);
    dk[3] = tangential({u + T(2) * a * a, T(2) * a * b}, T(6) * a, T(2) * b, T(2) * a);
    return;
  }
  if (!cam.fisheye_distorted) return;
  const LensTerms<T> f0 = equidistant_terms(t);  // K0, M0
  const T inv_1u = T(1) / (T(1) + u), w = u * f0.K * f0.K;
  T power = T(1);  // w^j
  for (int j = 0; j < 4; ++j) {
    const T p = power * w;
    dk[j] = radial(f0.K * p, f0.M * p + T(2) * f0.K * f0.K * T(j + 1) * power * inv_1u,
                   -T(2 * j + 3) * p * inv_1u);
    power *= w;
  }
}

// False for a point past the distorted lens's fold (Camera::fisheye_max_angle,
// Camera::pinhole_max_u), where the image folds back on itself: such Gaussians are culled, such
// points unseen.
template <typename T>
DGRD_HD bool lens_unfolded(const Camera<T>& cam, Vec3<T> t) {
  const T a = t.x / t.z, b = t.y / t.z;
  if (cam.pinhole_distorted) return a * a + b * b <= cam.pinhole_max_u;
  if (!cam.fisheye_distorted) return true;
  return atan_(sqrt_(a * a + b * b)) <= cam.fisheye_max_angle;
}

// The axis point: the world point at view-space (0, 0, 1), solving Wr p + T = e3 (by Cramer's
// rule, with Wr's rows r0, r1, r2; column 3 of the view matrix is never read). `inverse`, when
// not null, gets Wr^-1's columns (r1 x r2, r2 x r0, r0 x r1) / det for the backward.
template <typename T>
DGRD_HD Vec3<T> axis_point(const T* V, Mat3<T>* inverse = nullptr) {
  const Mat3<T> Wr = view_rotation(V);
  const auto row = [&](int j) { return Vec3<T>{Wr.m[j][0], Wr.m[j][1], Wr.m[j][2]}; };
  const auto cross = [](Vec3<T> p, Vec3<T> q) {
    return Vec3<T>{p.y * q.z - p.z * q.y, p.z * q.x - p.x * q.z, p.x * q.y - p.y * q.x};
  };
  const Vec3<T> c0 = cross(row(1), row(2)), c1 = cross(row(2), row(0)), c2 = cross(row(0), row(1));
  const T inv_det = T(1) / dot(row(0), c0);
  const Vec3<T> v = {-V[12], -V[13], T(1) - V[14]};
  if (inverse)
    *inverse = {{{c0.x * inv_det, c1.x * inv_det, c2.x * inv_det},
                 {c0.y * inv_det, c1.y * inv_det, c2.y * inv_det},
                 {c0.z * inv_det, c1.z * inv_det, c2.z * inv_det}}};
  return inv_det * (v.x * c0 + v.y * c1 + v.z * c2);
}

// The lens's principal point in pixels: the pinhole projection (projmatrix) of the axis.
template <typename T>
DGRD_HD Vec2<T> lens_centre(const Camera<T>& cam) {
  T inv_w;
  Vec3<T> hom;
  return project_mean(cam, axis_point(cam.viewmatrix), inv_w, hom);
}

// Adds the principal point's part of the camera gradient, from d/d(its NDC position) dndc:
// to projmatrix through the projection of the axis point a, to the view matrix through a
// itself. With Wr a + T = e3 held, a moves by -Wr^-1 (dV applied to [a, 1]), so dL/dV is
// view_matrix_backward's [a, 1] (x) dt with dt = -Wr^-T dL/da.
template <typename T>
DGRD_HD void lens_centre_backward(const Camera<T>& cam, Vec2<T> dndc, T dproj[16],
                                     T dview[16]) {
  Mat3<T> inverse;
  const Vec3<T> a = axis_point(cam.viewmatrix, &inverse);
  T dproj_axis[16];
  projection_matrix_backward(cam, a, dndc, dproj_axis);
  for (int k = 0; k < 16; ++k) dproj[k] += dproj_axis[k];
  const Vec3<T> dt = T(-1) * matvec_transposed(inverse, project_mean_backward(cam, a, dndc));
  T dview_axis[16];
  view_matrix_backward(a, dt, Mat3<T>{}, dview_axis);  // no rotation term: a is a point
  for (int k = 0; k < 16; ++k) dview[k] += dview_axis[k];
}

// The Gaussian's screen position in pixels: the pinhole or orthographic projection of its
// mean by projmatrix, or the lens's of its view-space position t.
template <typename T>
DGRD_HD Vec2<T> screen_position(const Camera<T>& cam, Vec3<T> mean, Vec3<T> t) {
  if (cam.lens()) {
    const LensTerms<T> f = lens_terms(cam, t);
    const Vec2<T> c = lens_centre(cam);
    return {c.x + cam.focal_x * (f.a * f.K + f.tau.x),
            c.y + cam.focal_y * (f.b * f.K + f.tau.y)};
  }
  T inv_w;
  Vec3<T> hom;
  return project_mean(cam, mean, inv_w, hom);
}

// ---------------------------------------------------------------- 3D covariance

// The standard rotation matrix of the quaternion (w, x, y, z), used as given (not normalized).
template <typename T>
DGRD_HD Mat3<T> quaternion_to_rotation(const T* q) {
  const T w = q[0], x = q[1], y = q[2], z = q[3];
  return {{{T(1) - T(2) * (y * y + z * z), T(2) * (x * y - w * z), T(2) * (x * z + w * y)},
           {T(2) * (x * y + w * z), T(1) - T(2) * (x * x + z * z), T(2) * (y * z - w * x)},
           {T(2) * (x * z - w * y), T(2) * (y * z + w * x), T(1) - T(2) * (x * x + y * y)}}};
}

// Sigma = R S S^T R^T with S = diag(modifier * scale).
template <typename T>
DGRD_HD Sym3<T> covariance_3d(Vec3<T> scale, T modifier, const T* q) {
  const Mat3<T> R = quaternion_to_rotation(q);
  const T s[3] = {modifier * scale.x, modifier * scale.y, modifier * scale.z};
  Mat3<T> M;  // R S
  for (int i = 0; i < 3; ++i)
    for (int k = 0; k < 3; ++k) M.m[i][k] = R.m[i][k] * s[k];
  const Mat3<T> S = matmul(M, transpose(M));
  return {S.m[0][0], S.m[0][1], S.m[0][2], S.m[1][1], S.m[1][2], S.m[2][2]};
}

// Symmetric matrix of d/d(Sigma_ij), entries treated as independent, from parameter gradients.
template <typename T>
DGRD_HD Mat3<T> symmetric_gradient(const Sym3<T>& g) {
  const T h = T(0.5);
  return {{{g.xx, h * g.xy, h * g.xz}, {h * g.xy, g.yy, h * g.yz}, {h * g.xz, h * g.yz, g.zz}}};
}

template <typename T>
DGRD_HD void covariance_3d_backward(Vec3<T> scale, T modifier, const T* q, const Sym3<T>& dsigma,
                                    Vec3<T>& dscale, T dq[4]) {
  const Mat3<T> R = quaternion_to_rotation(q);
  const T s[3] = {modifier * scale.x, modifier * scale.y, modifier * scale.z};
  Mat3<T> M;
  for (int i = 0; i < 3; ++i)
    for (int k = 0; k < 3; ++k) M.m[i][k] = R.m[i][k] * s[k];
  const Mat3<T> dM = matmul(symmetric_gradient(dsigma), M);  // half of d/dM = 2 G M
  T ds[3] = {T(0), T(0), T(0)};
  Mat3<T> dR;
  for (int i = 0; i < 3; ++i)
    for (int k = 0; k < 3; ++k) {
      ds[k] += T(2) * dM.m[i][k] * R.m[i][k];
      dR.m[i][k] = T(2) * dM.m[i][k] * s[k];
    }
  dscale = {modifier * ds[0], modifier * ds[1], modifier * ds[2]};
  const T w = q[0], x = q[1], y = q[2], z = q[3];
  const T(&g)[3][3] = dR.m;
  dq[0] = T(2) * (-z * g[0][1] + y * g[0][2] + z * g[1][0] - x * g[1][2] - y * g[2][0] +
                  x * g[2][1]);
  dq[1] = T(2) * (y * g[0][1] + z * g[0][2] + y * g[1][0] - T(2) * x * g[1][1] - w * g[1][2] +
                  z * g[2][0] + w * g[2][1] - T(2) * x * g[2][2]);
  dq[2] = T(2) * (-T(2) * y * g[0][0] + x * g[0][1] + w * g[0][2] + x * g[1][0] + z * g[1][2] -
                  w * g[2][0] + z * g[2][1] - T(2) * y * g[2][2]);
  dq[3] = T(2) * (-T(2) * z * g[0][0] - w * g[0][1] + x * g[0][2] + w * g[1][0] -
                  T(2) * z * g[1][1] + y * g[1][2] + x * g[2][0] + y * g[2][1]);
}

template <typename T>
DGRD_HD Sym3<T> gaussian_covariance_3d(const Camera<T>& cam, const GaussianInputs<T>& in, int i) {
  if (in.cov3D_precomp) {
    const T* c = in.cov3D_precomp + 6 * i;
    return {c[0], c[1], c[2], c[3], c[4], c[5]};
  }
  return covariance_3d(load3(in.scales, i), cam.scale_modifier, in.rotations + 4 * i);
}

// ---------------------------------------------------------------- 2D covariance (EWA)

// J Wr, the linearized projection at the (frustum-clamped) view-space mean.
template <typename T>
struct ScreenJacobian {
  T m[2][3];       // J Wr
  T J00, J02, J11, J12;
  T J01, J10;      // 0 but for the fisheye
  T u, v;          // clamped t.x / t.z and t.y / t.z
  bool u_free, v_free;  // the clamp did not bite
};

// The lens's J (LensTerms), unclamped: every point in front of the fisheye lands on a bounded
// disc, and the distorted pinhole's lie within its fold (lens_unfolded).
template <typename T>
DGRD_HD ScreenJacobian<T> lens_jacobian(const Camera<T>& cam, Vec3<T> t, const Mat3<T>& Wr) {
  const LensTerms<T> f = lens_terms(cam, t);
  ScreenJacobian<T> s;
  s.u_free = s.v_free = false;
  s.u = f.a;
  s.v = f.b;
  const T fx = cam.focal_x * f.inv_z, fy = cam.focal_y * f.inv_z, abM = f.a * f.b * f.M;
  s.J00 = fx * (f.K + f.a * f.a * f.M + f.T00);
  s.J01 = fx * (abM + f.T01);
  s.J02 = fx * (f.a * f.N - T(2) * f.tau.x);
  s.J10 = fy * (abM + f.T01);
  s.J11 = fy * (f.K + f.b * f.b * f.M + f.T11);
  s.J12 = fy * (f.b * f.N - T(2) * f.tau.y);
  for (int c = 0; c < 3; ++c) {
    s.m[0][c] = s.J00 * Wr.m[0][c] + s.J01 * Wr.m[1][c] + s.J02 * Wr.m[2][c];
    s.m[1][c] = s.J10 * Wr.m[0][c] + s.J11 * Wr.m[1][c] + s.J12 * Wr.m[2][c];
  }
  return s;
}

template <typename T>
DGRD_HD ScreenJacobian<T> screen_jacobian(const Camera<T>& cam, Vec3<T> t, const Mat3<T>& Wr) {
  if (cam.lens()) return lens_jacobian(cam, t, Wr);
  ScreenJacobian<T> s;
  s.J01 = s.J10 = T(0);
  if (cam.orthographic) {
    // x' = focal_x x + c: the same at every depth, nothing to clamp
    s.u_free = s.v_free = false;
    s.u = s.v = T(0);
    s.J00 = cam.focal_x;
    s.J11 = cam.focal_y;
    s.J02 = s.J12 = T(0);
  } else {
    const T limx = T(kFrustumClamp) * cam.tanfovx, limy = T(kFrustumClamp) * cam.tanfovy;
    const T txtz = t.x / t.z, tytz = t.y / t.z;
    s.u_free = !(txtz < -limx || txtz > limx);
    s.v_free = !(tytz < -limy || tytz > limy);
    const T tx = clamp(txtz, -limx, limx) * t.z;
    const T ty = clamp(tytz, -limy, limy) * t.z;
    s.u = tx / t.z;
    s.v = ty / t.z;
    s.J00 = cam.focal_x / t.z;
    s.J11 = cam.focal_y / t.z;
    s.J02 = -(cam.focal_x * tx) / (t.z * t.z);
    s.J12 = -(cam.focal_y * ty) / (t.z * t.z);
  }
  for (int c = 0; c < 3; ++c) {
    s.m[0][c] = s.J00 * Wr.m[0][c] + s.J02 * Wr.m[2][c];
    s.m[1][c] = s.J11 * Wr.m[1][c] + s.J12 * Wr.m[2][c];
  }
  return s;
}

// d/dt of the lens's J from d/dJ (dJ[2][3]): the terms of LensTerms, times focal / z^2.
template <typename T>
DGRD_HD void lens_jacobian_backward(const Camera<T>& cam, Vec3<T> t, const T (&dJ)[2][3],
                                    Vec3<T>& dt) {
  const LensTerms<T> f = lens_terms(cam, t);
  const T a = f.a, b = f.b, aa = a * a, bb = b * b, ab = a * b;
  // The derivatives shared by J's entries: d(J00)/dy = d(J01)/dx = b (M + a^2 P) and so on.
  const T Ma = f.M + aa * f.P, Mb = f.M + bb * f.P, abQ = ab * f.Q;
  const T Na = f.N + aa * f.Q, Nb = f.N + bb * f.Q;
  const T gx = cam.focal_x * f.inv_z * f.inv_z, gy = cam.focal_y * f.inv_z * f.inv_z;
  const T d00 = gx * dJ[0][0], d01 = gx * dJ[0][1], d02 = gx * dJ[0][2];
  const T d10 = gy * dJ[1][0], d11 = gy * dJ[1][1], d12 = gy * dJ[1][2];
  dt.x = d00 * a * (T(3) * f.M + aa * f.P) + (d01 + d10) * b * Ma + d02 * Na + d11 * a * Mb +
         d12 * abQ;
  dt.y = d00 * b * Ma + (d01 + d10) * a * Mb + d02 * abQ + d11 * b * (T(3) * f.M + bb * f.P) +
         d12 * Nb;
  dt.z = d00 * Na + (d01 + d10) * abQ + d02 * a * f.R + d11 * Nb + d12 * b * f.R;
  if (!cam.pinhole_distorted) return;
  // The tangential part: an entry E(a, b) / z of J (T00, T01, T11 of degree 1 in (a, b),
  // -2 tau of degree 2) has d/dx = dE/da / z^2, d/dy = dE/db / z^2 and, by Euler's theorem,
  // d/dz = -(1 + degree) E / z^2. dT00 = (6 p2, 2 p1), dT01 = (2 p1, 2 p2), dT11 = (2 p2, 6 p1).
  const T p1 = cam.pinhole_k[2], p2 = cam.pinhole_k[3], d01s = d01 + d10;
  dt.x += T(6) * p2 * d00 + T(2) * p1 * d01s + T(2) * p2 * d11 -
          T(2) * (d02 * f.T00 + d12 * f.T01);
  dt.y += T(2) * p1 * d00 + T(2) * p2 * d01s + T(6) * p1 * d11 -
          T(2) * (d02 * f.T01 + d12 * f.T11);
  dt.z += T(6) * (d02 * f.tau.x + d12 * f.tau.y) -
          T(2) * (d00 * f.T00 + d01s * f.T01 + d11 * f.T11);
}

// J Wr Sigma Wr^T J^T, before the dilation.
template <typename T>
DGRD_HD Sym2<T> covariance_2d(const ScreenJacobian<T>& J, const Sym3<T>& sigma) {
  const Mat3<T> S = to_dense(sigma);
  T JS[2][3];
  for (int r = 0; r < 2; ++r)
    for (int c = 0; c < 3; ++c)
      JS[r][c] = J.m[r][0] * S.m[0][c] + J.m[r][1] * S.m[1][c] + J.m[r][2] * S.m[2][c];
  const T a = JS[0][0] * J.m[0][0] + JS[0][1] * J.m[0][1] + JS[0][2] * J.m[0][2];
  const T b = JS[0][0] * J.m[1][0] + JS[0][1] * J.m[1][1] + JS[0][2] * J.m[1][2];
  const T c = JS[1][0] * J.m[1][0] + JS[1][1] * J.m[1][1] + JS[1][2] * J.m[1][2];
  return {a, b, c};
}

// From d/d(cov2d a, b, c): d/d(Sigma) as parameter gradients and d/d(t); and, for camera
// gradients (dWr not null), d/d(Wr) and (focal_x d/d(focal_x), focal_y d/d(focal_y)) through J
// into focal_share: each row of J is its focal times a function of t, but for the pinhole's
// J02 (J12) where the frustum clamp bites, -focal 1.3 tanfov / z = -1.3 (W / 2) / z whatever
// the focal.
template <typename T>
DGRD_HD void covariance_2d_backward(const Camera<T>& cam, Vec3<T> t, const Mat3<T>& Wr,
                                    const ScreenJacobian<T>& J, const Sym3<T>& sigma,
                                    const Sym2<T>& dcov, Sym3<T>& dsigma, Vec3<T>& dt,
                                    Mat3<T>* dWr = nullptr, Vec2<T>* focal_share = nullptr,
                                    T (*jacobian_grad)[2][3] = nullptr) {
  // cov = A Sigma A^T with A = J Wr; G = symmetric d/dcov.
  const T G[2][2] = {{dcov.a, T(0.5) * dcov.b}, {T(0.5) * dcov.b, dcov.c}};
  T GA[2][3];  // G A
  for (int r = 0; r < 2; ++r)
    for (int c = 0; c < 3; ++c) GA[r][c] = G[r][0] * J.m[0][c] + G[r][1] * J.m[1][c];
  // d/dSigma = A^T G A (independent entries); parameter gradients double the off-diagonal.
  T D[3][3];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) D[i][j] = J.m[0][i] * GA[0][j] + J.m[1][i] * GA[1][j];
  dsigma = {D[0][0], D[0][1] + D[1][0], D[0][2] + D[2][0], D[1][1], D[1][2] + D[2][1], D[2][2]};
  // d/dA = 2 G A Sigma, then d/dJ = d/dA Wr^T.
  const Mat3<T> S = to_dense(sigma);
  T dA[2][3];
  for (int r = 0; r < 2; ++r)
    for (int c = 0; c < 3; ++c)
      dA[r][c] = T(2) * (GA[r][0] * S.m[0][c] + GA[r][1] * S.m[1][c] + GA[r][2] * S.m[2][c]);
  T dJ[2][3];
  for (int r = 0; r < 2; ++r)
    for (int k = 0; k < 3; ++k)
      dJ[r][k] = dA[r][0] * Wr.m[k][0] + dA[r][1] * Wr.m[k][1] + dA[r][2] * Wr.m[k][2];
  if (jacobian_grad)
    for (int r = 0; r < 2; ++r)
      for (int k = 0; k < 3; ++k) (*jacobian_grad)[r][k] = dJ[r][k];
  if (dWr) {
    // d/dWr = J^T d/dA, with J = [[J00, 0, J02], [0, J11, J12]].
    for (int c = 0; c < 3; ++c) {
      dWr->m[0][c] = J.J00 * dA[0][c];
      dWr->m[1][c] = J.J11 * dA[1][c];
      dWr->m[2][c] = J.J02 * dA[0][c] + J.J12 * dA[1][c];
    }
  }
  if (focal_share) {
    const bool x_scales = J.u_free || cam.lens(), y_scales = J.v_free || cam.lens();
    focal_share->x = dJ[0][0] * J.J00 + dJ[0][1] * J.J01 + (x_scales ? dJ[0][2] * J.J02 : T(0));
    focal_share->y = dJ[1][0] * J.J10 + dJ[1][1] * J.J11 + (y_scales ? dJ[1][2] * J.J12 : T(0));
  }
  if (cam.orthographic) {  // J is constant
    dt = {T(0), T(0), T(0)};
    return;
  }
  if (cam.lens()) {
    lens_jacobian_backward(cam, t, dJ, dt);
    if (dWr)  // J's off-diagonal terms (0 elsewhere)
      for (int c = 0; c < 3; ++c) {
        dWr->m[0][c] += J.J10 * dA[1][c];
        dWr->m[1][c] += J.J01 * dA[0][c];
      }
    return;
  }
  // J00 = fx / tz, J02 = -fx u / tz with u = clamp(tx / tz) (and likewise for y).
  const T iz = T(1) / t.z, iz2 = iz * iz;
  const T du_dtz = J.u_free ? -t.x * iz2 : T(0), dv_dtz = J.v_free ? -t.y * iz2 : T(0);
  const T du_dtx = J.u_free ? iz : T(0), dv_dty = J.v_free ? iz : T(0);
  dt.x = dJ[0][2] * (-cam.focal_x * iz) * du_dtx;
  dt.y = dJ[1][2] * (-cam.focal_y * iz) * dv_dty;
  dt.z = -cam.focal_x * iz2 * dJ[0][0] - cam.focal_y * iz2 * dJ[1][1] +
         dJ[0][2] * cam.focal_x * (J.u * iz2 - iz * du_dtz) +
         dJ[1][2] * cam.focal_y * (J.v * iz2 - iz * dv_dtz);
}

// ---------------------------------------------------------------- conic, opacity, extent

template <typename T>
struct Footprint {
  Sym2<T> cov;    // dilated 2D covariance
  Sym2<T> conic;  // its inverse
  T aa_factor;    // antialiasing opacity factor h (1 when off)
  T det;          // of the dilated covariance
};

// Dilates the covariance by the low-pass filter (kernel_size px^2 on the diagonal), inverts it and
// computes the antialiasing factor.
// Returns false when the determinant is 0 (the Gaussian is culled), with a zero conic: the
// preprocess backward recomputes the footprint of a Gaussian the forward kept, and on a GPU its
// kernel may round the determinant apart from the forward's (fused multiply-adds), so it must
// not read an unset conic where its determinant comes out 0.
template <typename T>
DGRD_HD bool footprint(const Sym2<T>& cov, T kernel_size, bool antialiasing, Footprint<T>& f) {
  const T det0 = cov.a * cov.c - cov.b * cov.b;
  const T a = cov.a + kernel_size, c = cov.c + kernel_size;
  f.cov = {a, cov.b, c};
  f.det = a * c - cov.b * cov.b;
  f.aa_factor = antialiasing ? sqrt_(max2(T(kAntialiasMinRatio), det0 / f.det)) : T(1);
  if (f.det == T(0)) {
    f.conic = {T(0), T(0), T(0)};
    return false;
  }
  const T inv = T(1) / f.det;
  f.conic = {c * inv, -cov.b * inv, a * inv};
  return true;
}

// From d/d(conic) and d/d(h): d/d(cov2d) (dilation does not change derivatives). `cov` is the
// covariance before the dilation and `f` its footprint.
template <typename T>
DGRD_HD Sym2<T> footprint_backward(const Sym2<T>& cov, const Footprint<T>& f, bool antialiasing,
                                   const Sym2<T>& dconic, T daa) {
  // conic (A, B, C) = (c, -b, a) / det. Written with the conic's entries instead of 1 / det^2,
  // which overflows float for very large footprints: dA/da = -A^2, dB/da = -A B, dC/da = -B^2,
  // dA/db = -2 A B, dB/db = -(A C + B^2), dC/db = -2 B C, dA/dc = -B^2, dB/dc = -B C, dC/dc = -C^2.
  const T A = f.conic.a, B = f.conic.b, C = f.conic.c;
  Sym2<T> d;
  d.a = -(A * (A * dconic.a) + A * (B * dconic.b) + B * (B * dconic.c));
  d.b = -(T(2) * A * (B * dconic.a) + (A * C + B * B) * dconic.b + T(2) * B * (C * dconic.c));
  d.c = -(B * (B * dconic.a) + B * (C * dconic.b) + C * (C * dconic.c));
  if (antialiasing) {
    const T a = f.cov.a, b = f.cov.b, c = f.cov.c;
    const T ratio = (cov.a * cov.c - b * b) / f.det;
    if (ratio > T(kAntialiasMinRatio)) {
      // h = sqrt(det0 / det): dh/dx = (ddet0/dx - ratio ddet/dx) / (2 h det)
      const T k = daa / (T(2) * sqrt_(ratio) * f.det);
      d.a += k * (cov.c - ratio * c);
      d.b += k * (T(-2) * b + ratio * T(2) * b);
      d.c += k * (cov.a - ratio * a);
    }
  }
  return d;
}

// 3-sigma radius in pixels of the dilated covariance (a float holding an integer).
template <typename T>
DGRD_HD T footprint_radius(const Footprint<T>& f) {
  const T mid = T(0.5) * (f.cov.a + f.cov.c);
  const T lambda = mid + sqrt_(max2(T(kMinEigenSlack), mid * mid - f.det));
  return ceil_(T(kSigmaExtent) * sqrt_(lambda));
}

template <typename T>
DGRD_HD int tile_index_clamped(T v, int limit) {
  return int(clamp(floor_(v / T(kTileSize)), T(0), T(limit)));
}

// Tiles covered by the square of half-size `radius` around `mean`, clipped to the grid.
template <typename T>
DGRD_HD TileRect tile_rect(Vec2<T> mean, T radius, int tiles_x, int tiles_y) {
  const T extra = T(kTileSize - 1);
  return {tile_index_clamped(mean.x - radius, tiles_x), tile_index_clamped(mean.y - radius, tiles_y),
          tile_index_clamped(mean.x + radius + extra, tiles_x),
          tile_index_clamped(mean.y + radius + extra, tiles_y)};
}

// Tiles where the splat can reach alpha >= 1/255: the 3-sigma square of SPEC 4 cut to the tiles
// that hold a pixel of the splat's reach box (reach_rect in blend.h: the bounding box of the
// ellipse where o G can reach 1/255, widened by a margin for the rounding of the power, outside
// which splat_alpha skips the splat at every pixel and the CUDA warps pass it; for an elongated
// splat about 3/4 of the tiles of a disc around it on garden). Leaving the other tiles out
// changes no pixel, as the splat is skipped there anyway; it only shortens the tile lists.
// Needles too thin to bound safely keep the square; a splat too faint to reach 1/255 anywhere
// gets no tile.
template <typename T>
DGRD_HD TileRect visible_tiles(Vec2<T> mean, T radius, const Footprint<T>& f, T opacity,
                               const Camera<T>& cam) {
  // o G >= 1/255 somewhere needs 255 o >= 1 (G <= 1), give or take rounding
  if (!(opacity / T(kAlphaMin) >= T(0.999))) return {0, 0, 0, 0};
  const TileRect square = tile_rect(mean, radius, cam.tiles_x, cam.tiles_y);
  const PixelRect box = reach_rect(mean, Vec4<T>{f.conic.a, f.conic.b, f.conic.c, opacity},
                                   {0, cam.width - 1, 0, cam.height - 1}, cam.sample_margin);
  if (box.empty()) return {0, 0, 0, 0};
  const TileRect r = {max2(square.x0, box.x0 / kTileSize), max2(square.y0, box.y0 / kTileSize),
                      min2(square.x1, box.x1 / kTileSize + 1),
                      min2(square.y1, box.y1 / kTileSize + 1)};
  return (r.x0 < r.x1 && r.y0 < r.y1) ? r : TileRect{0, 0, 0, 0};
}

// ---------------------------------------------------------------- the whole preprocess

template <typename T>
DGRD_HD Vec3<T> gaussian_color(const Camera<T>& cam, const GaussianInputs<T>& in, int i,
                               Vec3<T> mean) {
  if (in.colors_precomp) return load3(in.colors_precomp, i);
  return sh_to_color(cam.sh_degree, mean, cam.campos,
                     sh_coeffs_of(in.dc, in.shs, in.sh_coeffs, i));
}

// Projects Gaussian i. Returns the result with radius 0 when it is culled: behind the near
// plane, degenerate, off screen, or with any non-finite input or derived value.
template <typename T>
DGRD_HD ProjectedGaussian<T> preprocess_gaussian(const Camera<T>& cam, const GaussianInputs<T>& in,
                                                 int i) {
  ProjectedGaussian<T> g = {};  // a culled Gaussian stores zeros
  const Vec3<T> mean = load3(in.means3D, i);
  const Vec3<T> t = to_view(cam.viewmatrix, mean);
  if (!(t.z > T(kNearPlane)) || !is_finite(mean)) return g;
  if (cam.lens() && !lens_unfolded(cam, t)) return g;

  g.mean2d = screen_position(cam, mean, t);

  const Mat3<T> Wr = view_rotation(cam.viewmatrix);
  const ScreenJacobian<T> J = screen_jacobian(cam, t, Wr);
  const Sym2<T> cov = covariance_2d(J, gaussian_covariance_3d(cam, in, i));
  Footprint<T> f;
  if (!footprint(cov, cam.kernel_size, cam.antialiasing, f)) return g;
  const T extent = footprint_radius(f);
  const T opacity = f.aa_factor * in.opacities[i];
  if (!(is_finite(g.mean2d) && is_finite(extent) && is_finite(f.conic.a) && is_finite(f.conic.b) &&
        is_finite(f.conic.c) && is_finite(opacity) && is_finite(t.z)))
    return g;

  // The tile rectangle comes from the radius as stored (an int32).
  const T radius = min2(extent, T(kMaxRadius));
  if (tile_rect(g.mean2d, radius, cam.tiles_x, cam.tiles_y).area() == 0) return g;
  // The colour last, once the Gaussian is known to be on screen: most of a large scene's are
  // not in a given view, and their SH (up to 48 values each) is then never read. Culled where
  // any of these checks fails, in whatever order.
  const Vec3<T> rgb = gaussian_color(cam, in, i, mean);
  if (!is_finite(rgb)) return g;
  g.rect = visible_tiles(g.mean2d, radius, f, opacity, cam);
  g.radius = int(radius);
  g.conic_opacity = {f.conic.a, f.conic.b, f.conic.c, opacity};
  // The depth channel blends z, or 1/z for an inverse-depth map (z > 0.2 here).
  g.feature = {rgb.x, rgb.y, rgb.z, cam.inverse_depth ? T(1) / t.z : t.z};
  return g;
}

// The key that orders Gaussians front to back from their blended depth value v (feature.w),
// within 31 bits: v = z > 0.2 orders like its float bits (sign bit clear); v = 1/z
// (inverse_depth) the other way round, so its bits are subtracted from 2^31 - 1. A culled
// Gaussian (v = 0) has no pairs; where its key lands does not matter. Every sort keeps ties in
// index order.
DGRD_HD uint32_t depth_sort_key(float v, bool inverse_depth) {
#if defined(__CUDA_ARCH__)
  const uint32_t bits = __float_as_uint(v);
#else
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
#endif
  return inverse_depth ? 0x7fffffffu - bits : bits;
}

// Backward of preprocess_gaussian for a Gaussian that was not culled: from the gradient of its
// screen-space quantities to every input. Recomputes the forward's intermediates (cheap, and
// bit-identical) instead of storing them. With `camera` not null, also writes this Gaussian's
// share of the camera gradient there (the default path skips that work).
template <typename T>
DGRD_HD void preprocess_gaussian_backward(const Camera<T>& cam, const GaussianInputs<T>& in, int i,
                                          const SplatGrad<T>& g, const GaussianGrads<T>& out,
                                          CameraGrad<T>* camera = nullptr) {
  const Vec3<T> mean = load3(in.means3D, i);
  const Vec3<T> t = to_view(cam.viewmatrix, mean);
  const Mat3<T> Wr = view_rotation(cam.viewmatrix);

  // Screen position: the user-visible means2D gradient is in NDC units.
  const Vec2<T> dndc = {g.mean2d.x * T(0.5) * T(cam.width), g.mean2d.y * T(0.5) * T(cam.height)};
  out.means2D[3 * i + 0] = dndc.x;
  out.means2D[3 * i + 1] = dndc.y;
  // Conic and opacity -> 2D covariance -> view-space mean and 3D covariance.
  const ScreenJacobian<T> J = screen_jacobian(cam, t, Wr);
  Vec3<T> dmean = {T(0), T(0), T(0)};
  Vec3<T> dt_position = {T(0), T(0), T(0)};  // the lens's screen position: J^T d/dpixel
  if (cam.lens()) {
    dt_position = {J.J00 * g.mean2d.x + J.J10 * g.mean2d.y, J.J01 * g.mean2d.x + J.J11 * g.mean2d.y,
                   J.J02 * g.mean2d.x + J.J12 * g.mean2d.y};
    if (camera)
      for (int k = 0; k < 16; ++k) camera->projmatrix[k] = T(0);
  } else {
    dmean = project_mean_backward(cam, mean, dndc);
    if (camera) projection_matrix_backward(cam, mean, dndc, camera->projmatrix);
  }
  const Sym3<T> sigma = gaussian_covariance_3d(cam, in, i);
  const Sym2<T> cov = covariance_2d(J, sigma);
  Footprint<T> f;
  // The forward kept it; if this rounding culls, conic 0.
  footprint(cov, cam.kernel_size, cam.antialiasing, f);
  const T opacity = in.opacities[i];
  out.opacities[i] = f.aa_factor * g.opacity;
  const Sym2<T> dcov = footprint_backward(cov, f, cam.antialiasing, g.conic, opacity * g.opacity);
  Sym3<T> dsigma;
  Vec3<T> dt;
  Mat3<T> dWr;
  Vec2<T> focal_share;
  T dJ[2][3];
  const bool distortion_grad = camera && (cam.fisheye_distorted || cam.pinhole_distorted);
  covariance_2d_backward(cam, t, Wr, J, sigma, dcov, dsigma, dt, camera ? &dWr : nullptr,
                         camera ? &focal_share : nullptr, distortion_grad ? &dJ : nullptr);
  // The blended depth value is t.z, or 1/t.z: d(1/z)/dz = -1/z^2.
  if (cam.inverse_depth) {
    const T iz = T(1) / t.z;
    dt.z -= g.feature.w * iz * iz;
  } else {
    dt.z += g.feature.w;
  }
  if (cam.lens()) dt = dt + dt_position;
  dmean = dmean + matvec_transposed(Wr, dt);
  if (camera) {
    view_matrix_backward(mean, dt, dWr, camera->viewmatrix);
    if (cam.lens()) {
      // The principal point's share (every Gaussian's d/dpixel moves it alike), and the
      // position's own focal: pixel = c + focal (a K + tau_x, b K + tau_y).
      lens_centre_backward(cam, dndc, camera->projmatrix, camera->viewmatrix);
      const LensTerms<T> f = lens_terms(cam, t);
      focal_share.x += g.mean2d.x * cam.focal_x * (f.a * f.K + f.tau.x);
      focal_share.y += g.mean2d.y * cam.focal_y * (f.b * f.K + f.tau.y);
    }
    // focal = size / (2 tanfov): d/d(tanfov) = -(focal d/d(focal)) / tanfov.
    camera->tanfov[0] = -focal_share.x / cam.tanfovx;
    camera->tanfov[1] = -focal_share.y / cam.tanfovy;
    if (distortion_grad) {
      lens_distortion_backward(cam, t, g.mean2d, dJ, camera->distortion);
    } else {
      for (int k = 0; k < kLensCoefficients; ++k) camera->distortion[k] = T(0);
    }
  }

  if (in.cov3D_precomp) {
    T* d = out.cov3D_precomp + 6 * i;
    d[0] = dsigma.xx; d[1] = dsigma.xy; d[2] = dsigma.xz;
    d[3] = dsigma.yy; d[4] = dsigma.yz; d[5] = dsigma.zz;
  } else {
    Vec3<T> dscale;
    covariance_3d_backward(load3(in.scales, i), cam.scale_modifier, in.rotations + 4 * i, dsigma,
                           dscale, out.rotations + 4 * i);
    out.scales[3 * i + 0] = dscale.x;
    out.scales[3 * i + 1] = dscale.y;
    out.scales[3 * i + 2] = dscale.z;
  }

  const Vec3<T> drgb = {g.feature.x, g.feature.y, g.feature.z};
  Vec3<T> ddirection = {T(0), T(0), T(0)};  // d/d(mean - campos) through the SH
  if (in.colors_precomp) {
    out.colors_precomp[3 * i + 0] = drgb.x;
    out.colors_precomp[3 * i + 1] = drgb.y;
    out.colors_precomp[3 * i + 2] = drgb.z;
  } else {
    ddirection = sh_to_color_backward(cam.sh_degree, mean, cam.campos,
                                      sh_coeffs_of(in.dc, in.shs, in.sh_coeffs, i), drgb,
                                      sh_coeffs_of(out.dc, out.shs, in.sh_coeffs, i));
    dmean = dmean + ddirection;
  }
  if (camera) {
    camera->campos[0] = -ddirection.x;
    camera->campos[1] = -ddirection.y;
    camera->campos[2] = -ddirection.z;
  }
  out.means3D[3 * i + 0] = dmean.x;
  out.means3D[3 * i + 1] = dmean.y;
  out.means3D[3 * i + 2] = dmean.z;
}

// The values of Gaussian i's input gradients that preprocess_gaussian_backward does not write:
// all of them for a culled Gaussian (it never sees those); else the third column of means2D, the
// SH coefficients above the active degree (all of them when colours are precomputed), and the
// scales and rotations when the covariance is precomputed. A backend that allocates its
// gradients uninitialized, rather than filling them with zeros first, calls this for every
// Gaussian (the CUDA backend).
template <typename T>
DGRD_HD void zero_unwritten_grads(const Camera<T>& cam, const GaussianInputs<T>& in, int i,
                                  bool culled, const GaussianGrads<T>& out) {
  const auto zero = [](T* values, int64_t first, int64_t count) {
    if (values)
      for (int64_t k = 0; k < count; ++k) values[first + k] = T(0);
  };
  const int64_t g = i;
  zero(out.means2D, 3 * g + (culled ? 0 : 2), culled ? 3 : 1);
  const int active = culled || in.colors_precomp ? 0 : (cam.sh_degree + 1) * (cam.sh_degree + 1);
  if (out.shs || out.dc) {
    const ShCoeffs<T> dsh = sh_coeffs_of(out.dc, out.shs, in.sh_coeffs, g);
    for (int k = active; k < in.sh_coeffs; ++k) zero(dsh.coeff(k), 0, 3);
  }
  if (culled || in.cov3D_precomp) {
    zero(out.scales, 3 * g, 3);
    zero(out.rotations, 4 * g, 4);
  }
  if (!culled) return;
  zero(out.means3D, 3 * g, 3);
  zero(out.opacities, g, 1);
  zero(out.colors_precomp, 3 * g, 3);
  zero(out.cov3D_precomp, 6 * g, 6);
}

// The near-plane test of markVisible.
template <typename T>
DGRD_HD bool in_front_of_camera(const T* viewmatrix, Vec3<T> p) {
  return to_view(viewmatrix, p).z > T(kNearPlane);
}

}  // namespace dgrd
