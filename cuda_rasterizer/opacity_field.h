// The opacity field at 3D points (Gaussian Opacity Fields' `integrate`): each point projected to
// its pixel, and each splat of that pixel's tile list blended there with its render alpha faded
// in front of the Gaussian's peak along the point's ray.
#pragma once

#include "blend.h"
#include "preprocess.h"
#include "types.h"

namespace dgrd {

// Where a point falls: its row and the tile of the pixel holding it (pixel x covers
// [x - 1/2, x + 1/2)), or false where no pixel of the image sees it (in front of the near plane,
// off the image, or not finite).
template <typename T>
DGRD_HD bool project_point(const Camera<T>& cam, Vec3<T> p, PointOnScreen<T>& pt, int& tile) {
  const Vec3<T> t = to_view(cam.viewmatrix, p);
  if (!(t.z > T(kNearPlane)) || !is_finite(p) || !is_finite(t)) return false;
  if (cam.lens() && !lens_unfolded(cam, t)) return false;
  pt.pixel = screen_position(cam, p, t);  // the ray below is any central camera's
  const T col = floor_(pt.pixel.x + T(0.5)), row = floor_(pt.pixel.y + T(0.5));
  if (!(col >= T(0) && col < T(cam.width) && row >= T(0) && row < T(cam.height))) return false;
  tile = (int(row) / kTileSize) * cam.tiles_x + int(col) / kTileSize;
  pt.ray = {t.x / t.z, t.y / t.z};
  pt.depth = t.z;
  return true;
}

template <typename T>
DGRD_HD Vec3<T> sym_matvec(const Sym3<T>& s, Vec3<T> v) {
  return {s.xx * v.x + s.xy * v.y + s.xz * v.z, s.xy * v.x + s.yy * v.y + s.yz * v.z,
          s.xz * v.x + s.yz * v.y + s.zz * v.z};
}

template <typename T>
DGRD_HD RayQuadric<T> ray_quadric(const Camera<T>& cam, const GaussianInputs<T>& in, int i) {
  const Mat3<T> Wr = view_rotation(cam.viewmatrix);
  const Mat3<T> V = matmul(matmul(Wr, to_dense(gaussian_covariance_3d(cam, in, i))),
                           transpose(Wr));  // the covariance in view space
  const T(&m)[3][3] = V.m;
  RayQuadric<T> q;
  q.adjugate = {m[1][1] * m[2][2] - m[1][2] * m[2][1], m[0][2] * m[2][1] - m[0][1] * m[2][2],
                m[0][1] * m[1][2] - m[0][2] * m[1][1], m[0][0] * m[2][2] - m[0][2] * m[2][0],
                m[0][2] * m[1][0] - m[0][0] * m[1][2], m[0][0] * m[1][1] - m[0][1] * m[1][0]};
  q.det = m[0][0] * q.adjugate.xx + m[0][1] * q.adjugate.xy + m[0][2] * q.adjugate.xz;
  q.mean = to_view(cam.viewmatrix, load3(in.means3D, i));
  return q;
}

// How much of a splat's alpha a point at depth z on `ray` sees: along the ray (z d, with
// d = (ray, 1)) q is a parabola in z, least at the peak z* = d^T adj mean / d^T adj d; in
// front of the peak the alpha fades as the density does, exp(-(d^T Sigma^-1 d) (z - z*)^2 / 2),
// and from the peak on it is whole (GOF's rule: a point behind a Gaussian sees all of it). A
// flat Gaussian (det 0) is a step at its peak; a ray it holds no information about (d^T adj d
// not positive, or not finite) sees all of it, as the render does.
template <typename T>
DGRD_HD T depth_ramp(const RayQuadric<T>& q, Vec2<T> ray, T z) {
  const Vec3<T> d = {ray.x, ray.y, T(1)};
  const Vec3<T> adj_d = sym_matvec(q.adjugate, d);
  const T curvature = dot(d, adj_d);  // det * d^T Sigma^-1 d
  if (!(curvature > T(0))) return T(1);
  const T peak = dot(adj_d, q.mean) / curvature;
  if (!(z < peak)) return T(1);
  if (!(q.det > T(0))) return T(0);
  const T dz = peak - z;
  return exp_(T(-0.5) * (curvature / q.det) * dz * dz);
}

// One splat's alpha at a point, from the render's alpha at the point's screen position
// (splat_alpha: the same shape, clamp and skip, or the CPU's pixel_alpha, which tests its power
// bound first), times the depth ramp; false where the result is below 1/255 (skipped, as the
// render skips). At a point behind the splat's peak this is the render's alpha at that
// position, so the opacity of a point behind everything is the weight map's value there.
template <typename T>
DGRD_HD bool fade_alpha(const RayQuadric<T>& q, const PointOnScreen<T>& pt, T& alpha) {
  alpha *= depth_ramp(q, pt.ray, pt.depth);
  return alpha >= T(kAlphaMin);
}

template <typename T, typename Shape>
DGRD_HD bool point_alpha(Vec2<T> mean2d, const Shape& shape, const RayQuadric<T>& q,
                         const PointOnScreen<T>& pt, T& alpha) {
  T G;
  Vec2<T> d;
  return splat_alpha(mean2d, shape, pt.pixel.x, pt.pixel.y, alpha, G, d) &&
         fade_alpha(q, pt, alpha);
}

// A point's transmittance through the splats it has seen, with the render's early stop: a splat
// that would take it below 1e-4 ends the walk unblended (PixelAccum::blend's test). The point's
// opacity is 1 - value.
template <typename T>
struct PointTransmittance {
  T value = T(1);
  bool walking = true;

  DGRD_HD void blend(T alpha) {
    const T after = value * (T(1) - alpha);
    if (after < T(kTransmittanceMin))
      walking = false;
    else
      value = after;
  }
};

}  // namespace dgrd
