// Per-pixel math (SPEC 4-6): evaluate one splat at a pixel, blend it front to back, and the
// reverse step walking back to front. Colour, depth and weight share one recurrence.
#pragma once

#include "fast_exp.h"
#include "math.h"
#include "types.h"

namespace dgrd {

// The Gaussian's exponent at offset d = mean2d - pixel. Written for any scalar-like T, so the CPU
// backend evaluates it on eight pixels at once with the very same arithmetic.
template <typename T>
DGRD_HD T splat_power(Vec4<T> conic_opacity, Vec2<T> d) {
  const Vec4<T> co = conic_opacity;
  return T(-0.5) * (co.x * d.x * d.x + co.z * d.y * d.y) - co.y * d.x * d.y;
}

// exp of a splat's power. On the host, float uses exp_poly (fast_exp.h), which the CPU backend
// also evaluates eight lanes at a time: every CPU path then makes the same skip decisions.
template <typename T>
DGRD_HD T splat_exp(T power) {
#if defined(__CUDA_ARCH__)
  return exp_(power);
#else
  return host_splat_exp(power);
#endif
}

// Opacity of a splat at pixel (px, py). Returns false when the splat is skipped there
// (power > 0, alpha < 1/255, or anything non-finite). `d` = mean2d - pixel.
template <typename T>
DGRD_HD bool splat_alpha(Vec2<T> mean2d, Vec4<T> conic_opacity, T px, T py, T& alpha, T& G,
                         Vec2<T>& d) {
  d = {mean2d.x - px, mean2d.y - py};
  const T power = splat_power(conic_opacity, d);
  if (!(power <= T(0))) return false;
  G = splat_exp(power);
  alpha = min2(T(kAlphaMax), conic_opacity.w * G);
  return alpha >= T(kAlphaMin);
}

// Running front-to-back state of one pixel.
template <typename T>
struct PixelAccum {
  T color[kColorChannels];
  T depth_sum;      // sum w_i z_i
  T weight;         // sum w_i
  T transmittance;  // T

  DGRD_HD void reset() {
    for (int c = 0; c < kColorChannels; ++c) color[c] = T(0);
    depth_sum = T(0);
    weight = T(0);
    transmittance = T(1);
  }

  // Blends one splat of opacity `alpha`. Returns false, blending nothing, when the pixel is
  // saturated: then this splat and every one behind it are not blended.
  DGRD_HD bool blend(T alpha, Vec4<T> feature) {
    const T next = transmittance * (T(1) - alpha);
    if (next < T(kTransmittanceMin)) return false;
    accumulate(alpha, feature);
    return true;
  }

  // The blend itself, for a splat known not to saturate the pixel. alpha = 0 changes nothing,
  // bit for bit, which is how lanes that do not blend a splat pass it.
  template <typename S>
  DGRD_HD void accumulate(T alpha, Vec4<S> feature) {
    color[0] += feature.x * alpha * transmittance;
    color[1] += feature.y * alpha * transmittance;
    color[2] += feature.z * alpha * transmittance;
    depth_sum += feature.w * alpha * transmittance;
    weight += alpha * transmittance;
    transmittance = transmittance * (T(1) - alpha);
  }

  // Writes the outputs of SPEC 5 for pixel p, and what the backward needs of it. (Planes are
  // H x W; 3 H W may pass 2^31, hence the 64-bit plane size.)
  DGRD_HD void store(const PixelBuffers<T>& px, int p, int64_t plane, const T* background,
                     int n_contrib) const {
    for (int c = 0; c < kColorChannels; ++c)
      px.color[c * plane + p] = color[c] + transmittance * background[c];
    const T depth = weight > T(0) ? depth_sum / weight : T(0);
    px.depth[p] = depth;
    px.weight[p] = weight;
    px.pixel_state[PixelBuffers<T>::kFinalT * plane + p] = transmittance;
    px.pixel_state[PixelBuffers<T>::kWeight * plane + p] = weight;
    px.pixel_state[PixelBuffers<T>::kDepth * plane + p] = depth;
    px.n_contrib[p] = n_contrib;
  }
};

// Reverse walk of one pixel, back to front from its last blended splat. The five blended
// features are (r, g, b, z, 1); their upstream gradients are the colour gradient, g_S and
// g_Wtot of SPEC 6, and the background enters the colour alone.
template <typename T>
struct PixelBackward {
  T upstream[kFeatures];
  T background_dot;     // <background, dL/dcolor>
  T final_transmittance;
  T transmittance;      // T_i, recovered by dividing back
  T behind[kFeatures];  // normalized features accumulated behind the current splat
  T last_alpha;
  T last_feature[kFeatures];

  // Starts the walk of pixel p from what the forward saved and the upstream gradients (any
  // of which may be absent).
  DGRD_HD void init(const PixelBuffers<T>& px, const PixelGrads<T>& grads, int p, int64_t plane,
                    const T* background) {
    const T final_T = px.pixel_state[PixelBuffers<T>::kFinalT * plane + p];
    const T weight = px.pixel_state[PixelBuffers<T>::kWeight * plane + p];
    const T depth = px.pixel_state[PixelBuffers<T>::kDepth * plane + p];
    const T ddepth = grads.depth ? grads.depth[p] : T(0);
    const T dweight = grads.weight ? grads.weight[p] : T(0);
    background_dot = T(0);
    for (int c = 0; c < kColorChannels; ++c) {
      upstream[c] = grads.color ? grads.color[c * plane + p] : T(0);
      background_dot += background[c] * upstream[c];
    }
    // depth = S / weight: g_S = g_D / weight, g_Wtot = g_W - g_D depth / weight.
    const T g_s = weight > T(0) ? ddepth / weight : T(0);
    upstream[kDepthFeature] = g_s;
    upstream[kWeightFeature] = dweight - g_s * depth;
    final_transmittance = final_T;
    transmittance = final_T;
    last_alpha = T(0);
    for (int f = 0; f < kFeatures; ++f) {
      behind[f] = T(0);
      last_feature[f] = T(0);
    }
  }

  // Un-blends the splat in front of those already visited, accumulating its gradients.
  DGRD_HD void step(T alpha, T G, Vec2<T> d, Vec4<T> conic_opacity, Vec4<T> feature,
                    SplatGrad<T>& grad) {
    transmittance = transmittance / (T(1) - alpha);
    const T w = alpha * transmittance;
    const T f[kFeatures] = {feature.x, feature.y, feature.z, feature.w, T(1)};
    T dalpha = T(0);
    for (int k = 0; k < kFeatures; ++k) {
      behind[k] = last_alpha * last_feature[k] + (T(1) - last_alpha) * behind[k];
      last_feature[k] = f[k];
      dalpha += (f[k] - behind[k]) * upstream[k];
    }
    last_alpha = alpha;
    dalpha = dalpha * transmittance - final_transmittance / (T(1) - alpha) * background_dot;

    grad.feature = {w * upstream[0], w * upstream[1], w * upstream[2], w * upstream[kDepthFeature]};
    // alpha = min(0.99, o G) with a straight-through clamp: d alpha / d(o G) = 1.
    const Vec4<T> co = conic_opacity;
    grad.opacity = G * dalpha;
    const T dpower = G * co.w * dalpha;
    grad.mean2d = {dpower * (-co.x * d.x - co.y * d.y), dpower * (-co.z * d.y - co.y * d.x)};
    grad.conic = {T(-0.5) * d.x * d.x * dpower, -d.x * d.y * dpower, T(-0.5) * d.y * d.y * dpower};
  }
};

}  // namespace dgrd
