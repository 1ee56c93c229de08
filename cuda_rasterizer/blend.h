// Per-pixel math (SPEC 4-6, 8): evaluate one splat at a pixel, blend it front to back, and the
// reverse step walking back to front. Colour, depth and weight share one recurrence; feature
// channels and the median depth (optional outputs) have their own steps at the end.
#pragma once

#include <limits>
#include <type_traits>

#include "fast_exp.h"
#include "vector_math.h"
#include "types.h"

namespace dgrd {

// The Gaussian's exponent at offset d = mean2d - pixel. Written for any scalar-like T, so the CPU
// backend evaluates it on eight pixels at once with the very same arithmetic.
template <typename T>
DGRD_HD T splat_power(Vec4<T> conic_opacity, Vec2<T> d) {
  const Vec4<T> co = conic_opacity;
#if defined(__CUDA_ARCH__) || defined(DGRD_EMULATE_FMA)
  // On a GPU (and in its emulation) the two fused multiply-adds are spelled out. Left to the
  // compiler, which product fuses with which sum may differ from one kernel to another, so that
  // two kernels (the render and its split or warp-skipping variants, the backward) could find
  // alphas a unit apart at the same pixel; spelled out, no product is left to fuse, and every
  // kernel and the emulation round alike. Not on the CPU backend, built without fused
  // multiply-adds (std::fma there is a library call).
  if constexpr (std::is_floating_point<T>::value) {
    const T quadratic = fma_(co.x * d.x, d.x, co.z * d.y * d.y);
    return fma_(T(-0.5), quadratic, -(co.y * d.x) * d.y);
  }
#endif
  return T(-0.5) * (co.x * d.x * d.x + co.z * d.y * d.y) - co.y * d.x * d.y;
}

// The CUDA kernels' form of a splat's shape, made once where a splat is staged for a tile: the
// exponent in base 2, power log2(e) = a' dx^2 + b' dx dy + c' dy^2, with (a', b', c') the
// conic's (a, b, c) times -log2(e) (1/2, 1, 1/2). Evaluated as (a' dx + b' dy) dx + c' dy dy,
// it takes three products and two fused adds where the natural power takes seven operations
// and its conversion to base 2 for the special-function unit's exponential one more (three
// fewer at every splat a pixel evaluates). The CPU backend keeps the conic (`Vec4` conic and
// opacity), whose power its own exponential takes; each shape has its splat_power, shape_exp,
// opacity_of and power_grad, and everything else is written once for both.
template <typename T>
struct Base2Exponent {
  Vec4<T> coefficients;  // (a', b', c', opacity)

  DGRD_HD static Base2Exponent of(Vec4<T> conic_opacity) {
    const T half = T(-0.5f * kLog2e);
    return {{conic_opacity.x * half, conic_opacity.y * T(-kLog2e), conic_opacity.z * half,
             conic_opacity.w}};
  }
};

// The exponent in base 2 at offset d (spelled out in fused multiply-adds, as splat_power is on
// the GPU, so that every kernel and the emulation round alike).
template <typename T>
DGRD_HD T splat_power(const Base2Exponent<T>& e, Vec2<T> d) {
  const Vec4<T> c = e.coefficients;
  return fma_(fma_(c.y, d.y, c.x * d.x), d.x, c.z * d.y * d.y);
}

// exp of a splat's power. On the host, float uses exp_poly (fast_exp.h), which the CPU backend
// also evaluates eight lanes at a time: every CPU path then makes the same skip decisions.
// The GPU takes 2^(power log2(e)) from the special-function unit (`ex2.approx.ftz`, what fast
// math makes of expf; splat_exp2): 2 instructions, where the accurate expf takes 8
// (doc/performance.md, "CUDA"); the CUDA kernels' Base2Exponent hands it the power in base 2
// directly. Its error, under 1e-6 relative for the powers that matter (above -5.6: below,
// alpha < 1/255 at any opacity), is far inside the 1e-3 that the reach boxes and the
// opacity-aware tiles allow for the exponential's rounding; a result below 2^-126 is flushed
// to zero, which no visible splat is.
template <typename T>
DGRD_HD T splat_exp2(T power2);

template <typename T>
DGRD_HD T splat_exp(T power) {
#if defined(__CUDA_ARCH__) || defined(DGRD_EMULATE_FMA)
  if constexpr (std::is_same<T, float>::value) return splat_exp2(power * kLog2e);
#endif
#if defined(__CUDA_ARCH__)
  return exp_(power);
#else
  return host_splat_exp(power);
#endif
}

// 2^power2, the exponential of a Base2Exponent's power: on the GPU the special-function unit's
// `ex2.approx.ftz`; the emulated CUDA backend built to round as a GPU (tools/emulated_build.py)
// takes the library's exp2f (within 2 units in the last place of ex2.approx) and flushes as the
// GPU does. (The emulation's module renders nothing on the CPU backend's lanes, which keep
// exp_poly.)
template <typename T>
DGRD_HD T splat_exp2(T power2) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same<T, float>::value) {
    float g;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(g) : "f"(power2));
    return g;
  }
  return exp2_(power2);
#else
  if constexpr (std::is_same<T, float>::value) {
    const float g = std::exp2(power2);
    return g < std::numeric_limits<float>::min() ? 0.f : g;
  }
  return std::exp2(power2);
#endif
}

// Each shape's exponential of its own power, and its opacity.
template <typename T>
DGRD_HD T shape_exp(const Vec4<T>&, T power) { return splat_exp(power); }
template <typename T>
DGRD_HD T shape_exp(const Base2Exponent<T>&, T power2) { return splat_exp2(power2); }
template <typename T>
DGRD_HD T opacity_of(const Vec4<T>& conic_opacity) { return conic_opacity.w; }
template <typename T>
DGRD_HD T opacity_of(const Base2Exponent<T>& e) { return e.coefficients.w; }

// 1 / (1 - alpha): the reverse walk takes a splat's blend back out of the transmittance,
// T_i = T_{i+1} / (1 - alpha_i), and divides two more sums by the same 1 - alpha (the
// background's and the feature channels'), so a step takes one reciprocal and multiplies. The
// CUDA kernels take it from the special-function unit (`rcp.approx.ftz`, within 1 unit in the
// last place: 2 instructions, where each IEEE division took about 8 and a branch to its slow
// path); 1 - alpha lies in [0.01, 1), far from the ranges where it flushes or overflows. The
// CPU divides.
template <typename T>
DGRD_HD T unblend_factor(T alpha) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same<T, float>::value) {
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(1.f - alpha));
    return r;
  }
#elif defined(DGRD_EMULATE_FMA)
  // The emulation built to round as a GPU takes the worst the GPU may give: the quotient moved
  // up by a unit in the last place at every step, an error that accumulates along a pixel's
  // walk back (where the GPU's errors may cancel), so that every CUDA test's tolerance is
  // checked against it.
  if constexpr (std::is_same<T, float>::value)
    return std::nextafter(1.f / (1.f - alpha), std::numeric_limits<float>::infinity());
#endif
  return T(1) / (T(1) - alpha);
}

// Opacity of a splat at pixel (px, py). Returns false when the splat is skipped there
// (power > 0, alpha < 1/255, or anything non-finite). `d` = mean2d - pixel.
template <typename T, typename Shape>
DGRD_HD bool splat_alpha(Vec2<T> mean2d, const Shape& shape, T px, T py, T& alpha, T& G,
                         Vec2<T>& d) {
  d = {mean2d.x - px, mean2d.y - py};
  const T power = splat_power(shape, d);
  // One test of both conditions rather than a return after the first: the GPU then keeps the
  // result as a predicate; with two exits its compilers merged them into a byte, 3-4
  // instructions at every evaluation. The exponential of a power above 0 (or NaN) is taken for
  // nothing, and is harmless (exp_poly takes such a power as 0).
  G = shape_exp(shape, power);
  alpha = min2(T(kAlphaMax), opacity_of(shape) * G);
  return (power <= T(0)) & (alpha >= T(kAlphaMin));
}

// The box around mean2d outside of which splat_alpha skips the splat at every pixel. With
// q(d) = d^T C d (C the conic), alpha >= 1/255 needs q <= 2 tau, tau = log(255 o); that ellipse
// lies within |d.x| <= sqrt(2 tau C^-1_xx), |d.y| <= sqrt(2 tau C^-1_yy), and C^-1 = (c, -b, a) /
// det. tau gets 1e-3 for the rounding of exp and of o G, and the box a margin for the rounding
// of the power at a pixel (given the pixel's own float d), which grows with the conic's
// condition number. The binning takes its tiles from this box too (visible_tiles). Returns
// false, bounding nothing, for conics too thin or degenerate to bound safely; a non-finite
// opacity gives an infinite (or NaN) box, which rejects nothing either.
template <typename T>
DGRD_HD bool splat_reach(Vec4<T> conic_opacity, Vec2<T>& half_extent) {
  const Vec4<T> co = conic_opacity;
  const T det = co.x * co.z - co.y * co.y;
  if (!(co.x > T(0)) || !(co.z > T(0)) || !(det > T(0))) return false;
  const T mid = T(0.5) * (co.x + co.z);
  const T lambda_max = mid + sqrt_(max2(mid * mid - det, T(0)));
  const T kappa = lambda_max * lambda_max / det;  // lambda_max / lambda_min
  const T margin = T(64) * unit_roundoff<T>() * kappa + T(1e-3);
  if (!(margin < T(0.25))) return false;
  const T tau = max2(log_(co.w / T(kAlphaMin)), T(0)) + T(1e-3);
  const T scale = T(2) * tau * (T(1) + margin) / det;
  half_extent = {sqrt_(scale * co.z), sqrt_(scale * co.x)};
  return true;
}

template <typename T>
DGRD_HD T distance(T a, T b) {
  return max2(a - b, b - a);
}

// The pixels first .. last along one axis whose offset |mean - p| (the float subtraction
// splat_alpha makes) is at most `half`, as the interval [lo, hi] (lo > hi: none). Every such
// pixel lies in [floor(mean - half), ceil(mean + half)], since one beyond is more than half + 1
// away; an end whose own offset is beyond half moves in by one. A NaN keeps every pixel.
template <typename T>
DGRD_HD void reach_interval(T mean, T half, int first, int last, int& lo, int& hi) {
  T low = floor_(mean - half), high = ceil_(mean + half);
  if (!(low <= high)) {  // NaN
    lo = first;
    hi = last;
    return;
  }
  if (distance(mean, low) > half) low += T(1);
  if (distance(mean, high) > half) high -= T(1);
  low = max2(low, T(first));
  high = min2(high, T(last));
  if (!(low <= high)) {
    lo = 1;
    hi = 0;
    return;
  }
  lo = int(low);
  hi = int(high);
}

// Pixels x0 .. x1, y0 .. y1 (inclusive; empty when x0 > x1 or y0 > y1).
struct PixelRect {
  int x0, x1, y0, y1;
  DGRD_HD bool empty() const { return x0 > x1 || y0 > y1; }
};

// The part of the pixel rectangle `area` where a splat may be blended: outside it every pixel
// is outside the splat's reach box (splat_reach), where splat_alpha skips it anyway. The whole
// area when the splat cannot be bounded safely. `margin` (Camera::sample_margin, the largest
// |offset|) widens the box for pixels sampled off their own coordinates
// (Camera::subpixel_offset).
template <typename T>
DGRD_HD PixelRect reach_rect(Vec2<T> mean, Vec4<T> conic_opacity, PixelRect area,
                             T margin = T(0)) {
  Vec2<T> half;
  if (!splat_reach(conic_opacity, half)) return area;
  if (margin > T(0)) {
    // and for the rounding of x + o and of mean - (x + o): a few units of 2^-24 of the
    // coordinates involved (the pixel's, within the area, and the mean's, within half + margin
    // of it), well inside 2^-20 of them
    const T extent = T(max2(max2(area.x1, -area.x0), max2(area.y1, -area.y0)));
    const T ulps = T(1) / T(1 << 20);
    const T slack = margin + (extent + margin + T(1)) * ulps;
    half = {half.x + slack + half.x * ulps, half.y + slack + half.y * ulps};
  }
  PixelRect r;
  reach_interval(mean.x, half.x, area.x0, area.x1, r.x0, r.x1);
  reach_interval(mean.y, half.y, area.y0, area.y1, r.y0, r.y1);
  return r;
}

// Which bands of kBandRows rows of the tile whose first pixel is (x0, y0) a splat may reach (the
// CUDA render's warps are bands of two rows): bit b is clear only when rows y0 + kBandRows b ..
// y0 + kBandRows (b + 1) - 1 lie outside its reach_rect (widened by `margin`, as reach_rect).
template <int kBandRows, typename T>
DGRD_HD unsigned band_reach_mask(int x0, int y0, Vec2<T> mean, Vec4<T> conic_opacity,
                                 T margin = T(0)) {
  static_assert(kTileSize % kBandRows == 0 && kTileSize / kBandRows < 32, "bands split the tile");
  const PixelRect r = reach_rect(mean, conic_opacity,
                                 {x0, x0 + kTileSize - 1, y0, y0 + kTileSize - 1}, margin);
  if (r.empty()) return 0;
  const int band_low = (r.y0 - y0) / kBandRows, band_high = (r.y1 - y0) / kBandRows;
  return ((2u << band_high) - 1) & ~((1u << band_low) - 1);
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
    const T w = alpha * transmittance;  // the splat's weight, one product for all five sums
    color[0] += feature.x * w;
    color[1] += feature.y * w;
    color[2] += feature.z * w;
    depth_sum += feature.w * w;
    weight += w;
    transmittance = transmittance * (T(1) - alpha);
  }

  // The sum of blended feature k (r, g, b, z, 1).
  DGRD_HD T sum(int k) const {
    return k < kColorChannels ? color[k] : k == kDepthFeature ? depth_sum : weight;
  }

  // Where a tile list is split for the backward (TileSplits), the walk behind the split starts
  // from T_b, the transmittance there, and from what the splats after it add, normalized as
  // PixelBackward::behind is: (F - F_b) / T_b, F the final sums and F_b those at the split
  // (T >= kTransmittanceMin > 0 always). The forward saves T_b and F_b as it passes the split
  // (save_split, before the splat at the split), and once F is known makes F_b the normalized
  // sums (finish_split).
  DGRD_HD void save_split(const TileSplits& s, int part, int thread) const {
    s.value(part, 0, thread) = transmittance;
    for (int k = 0; k < kWalkedFeatures; ++k) s.value(part, 1 + k, thread) = sum(k);
  }
  DGRD_HD void finish_split(const TileSplits& s, int part, int thread) const {
    const T split_transmittance = s.value(part, 0, thread);
    for (int k = 0; k < kWalkedFeatures; ++k) {
      T& saved = s.value(part, 1 + k, thread);
      saved = (sum(k) - saved) / split_transmittance;
    }
  }

  // The split forward (TileSplits): a part of the list composited apart from T = 1 (P, the
  // product of its 1 - alpha, and S, its sums) is appended in one step, F += T S and T *= P,
  // where none of its splats can saturate the pixel: T only decreases along the part, so none
  // does when T P >= kTransmittanceMin. Returns false, changing nothing, where one may: then
  // the pixel stops within the part and walks it splat by splat.
  template <typename Part>
  DGRD_HD bool append(const Part& part) {
    const T next = transmittance * part.transmittance;
    if (next < T(kTransmittanceMin)) return false;
    for (int c = 0; c < kColorChannels; ++c) color[c] += transmittance * part.sums[c];
    depth_sum += transmittance * part.sums[kDepthFeature];
    weight += transmittance * part.sums[kWeightFeature];
    transmittance = next;
    return true;
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

// A part of a split tile list at one pixel, as the split forward leaves it in the slot of the
// split that ends it (TileSplits::composite): the product P of its 1 - alpha, its sums S of the
// five blended features from T = 1, and the position within the part of its last blend (-1:
// none; positions < 2^24 are exact in a float). The first part of a list is walked exactly,
// from the pixel's true start; a pixel that stops within it is marked by P = -1.
template <typename T>
struct PartComposite {
  T transmittance;
  T sums[kFeatures];
  int last;

  DGRD_HD bool stopped() const { return transmittance < T(0); }
  DGRD_HD void load(const TileSplits& s, int slot, int thread) {
    transmittance = s.composite_value(slot, 0, thread);
    for (int k = 0; k < kFeatures; ++k) sums[k] = s.composite_value(slot, 1 + k, thread);
    last = int(s.composite_value(slot, 1 + kFeatures, thread));
  }
  DGRD_HD static void store(const TileSplits& s, int slot, int thread, const PixelAccum<T>& acc,
                            int last, bool stopped = false) {
    s.composite_value(slot, 0, thread) = stopped ? T(-1) : acc.transmittance;
    for (int k = 0; k < kFeatures; ++k) s.composite_value(slot, 1 + k, thread) = acc.sum(k);
    s.composite_value(slot, 1 + kFeatures, thread) = T(last);
  }
};

// d/d mean2d of a splat at a pixel from d/d(its power) (one half of alpha_grad_to_splat): d
// power / d d = -(a dx + b dy, b dx + c dy); from a Base2Exponent's coefficients, the same
// as (2 a' dx + b' dy, b' dx + 2 c' dy) / log2(e).
template <typename T>
DGRD_HD Vec2<T> mean2d_grad(T dpower, Vec2<T> d, const Vec4<T>& co) {
  return {dpower * (-co.x * d.x - co.y * d.y), dpower * (-co.z * d.y - co.y * d.x)};
}
template <typename T>
DGRD_HD Vec2<T> mean2d_grad(T dpower, Vec2<T> d, const Base2Exponent<T>& e) {
  // Built from the products and the sum splat_power made (a' dx, c' dy, a' dx + b' dy), which
  // the compiler then takes as they are: three operations where the conic's form takes four.
  const Vec4<T> c = e.coefficients;
  const T ax = c.x * d.x, cy = c.z * d.y;
  const T dpower2 = dpower * T(kLn2);
  return {dpower2 * (fma_(c.y, d.y, ax) + ax), dpower2 * fma_(c.y, d.x, cy + cy)};
}

// |v| per component, on any scalar-like T (max2 of v and -v: the CPU's lanes have no fabs).
template <typename T>
DGRD_HD Vec2<T> abs_each(Vec2<T> v) {
  return {max2(v.x, -v.x), max2(v.y, -v.y)};
}

// dL/dalpha of a splat at a pixel, carried to its screen-space parameters (mean2d, conic,
// opacity); sets those fields of `grad`, leaves grad.feature alone. The conic's gradient is of
// (a, b, c) whatever the shape staged.
template <typename T, typename Shape>
DGRD_HD void alpha_grad_to_splat(T dalpha, T G, Vec2<T> d, const Shape& shape,
                                 SplatGrad<T>& grad) {
  // alpha = min(0.99, o G) with a straight-through clamp: d alpha / d(o G) = 1.
  grad.opacity = G * dalpha;
  const T dpower = G * opacity_of(shape) * dalpha;
  grad.mean2d = mean2d_grad(dpower, d, shape);
  grad.conic = {T(-0.5) * d.x * d.x * dpower, -d.x * d.y * dpower, T(-0.5) * d.y * d.y * dpower};
}

// Reverse walk of one pixel, back to front from its last blended splat. The five blended
// features are (r, g, b, z, 1); their upstream gradients are the colour gradient, g_S and
// g_Wtot of SPEC 6, and the background enters the colour alone. The walk carries sums of the
// first four only: the weight, sum w = 1 - T_final, and the background's part of the colour,
// T_final bg, depend on splat i through T_final alone, and d T_final / d alpha_i = -T_final /
// (1 - alpha_i), so their part of dL/dalpha_i is T_final (g_Wtot - <bg, g_colour>) / (1 -
// alpha_i). Where the walk took it as T_i (1 - sum behind), a saturated pixel lost digits: 1
// minus a sum near 1, for what is T_final / T_{i+1}.
template <typename T>
struct PixelBackward {
  T upstream[kWalkedFeatures];
  T final_grad;         // T_final (g_Wtot - <background, g_colour>)
  T transmittance;      // T_i, recovered by dividing back
  T behind[kWalkedFeatures];  // normalized features accumulated behind the current splat

  // Starts the walk of pixel p from what the forward saved and the upstream gradients (any
  // of which may be absent).
  DGRD_HD void init(const PixelBuffers<T>& px, const PixelGrads<T>& grads, int p, int64_t plane,
                    const T* background) {
    const T final_T = px.pixel_state[PixelBuffers<T>::kFinalT * plane + p];
    const T weight = px.pixel_state[PixelBuffers<T>::kWeight * plane + p];
    const T depth = px.pixel_state[PixelBuffers<T>::kDepth * plane + p];
    const T ddepth = grads.depth ? grads.depth[p] : T(0);
    const T dweight = grads.weight ? grads.weight[p] : T(0);
    T background_dot = T(0);  // <background, g_colour>
    for (int c = 0; c < kColorChannels; ++c) {
      upstream[c] = grads.color ? grads.color[c * plane + p] : T(0);
      background_dot += background[c] * upstream[c];
    }
    // depth = S / weight: g_S = g_D / weight, g_Wtot = g_W - g_D depth / weight.
    const T g_s = weight > T(0) ? ddepth / weight : T(0);
    upstream[kDepthFeature] = g_s;
    final_grad = final_T * (dweight - g_s * depth - background_dot);
    transmittance = final_T;
    for (int f = 0; f < kWalkedFeatures; ++f) behind[f] = T(0);
  }

  // Moves the start of the walk to a split of the pixel's tile list (after init): the splat in
  // front of the split is the next one un-blended (PixelAccum::save_split).
  DGRD_HD void resume(const TileSplits& s, int part, int thread) {
    transmittance = s.value(part, 0, thread);
    for (int k = 0; k < kWalkedFeatures; ++k) behind[k] = s.value(part, 1 + k, thread);
  }

  // Un-blends the splat in front of those already visited, accumulating its gradients.
  template <typename Shape>
  DGRD_HD void step(T alpha, T G, Vec2<T> d, const Shape& shape, Vec4<T> feature,
                    SplatGrad<T>& grad) {
    alpha_grad_to_splat(unblend(alpha, unblend_factor(alpha), feature, grad), G, d, shape, grad);
  }

  // `step` for a pixel that may not blend the splat, without a branch: where `blends` (a bool,
  // or the CPU's lane mask) is false, the walk is left as it was (alpha taken as 0, the
  // reciprocal as 1) and every gradient is 0, even where the walk holds a NaN (a NaN upstream
  // gradient at the pixel, which 0 x NaN would carry to every splat its warp, or its lanes,
  // visit). The CUDA backward steps every lane of a warp in which one pixel blends the splat,
  // so that no lane's ten values are zeroed at every splat.
  template <typename Mask, typename Shape>
  DGRD_HD void step_if(Mask blends, T alpha, T G, Vec2<T> d, const Shape& shape, Vec4<T> feature,
                       SplatGrad<T>& grad) {
    const T dalpha = unblend_if(blends, alpha, unblend_factor_if(blends, alpha), feature, grad);
    alpha_grad_to_splat(dalpha, zero_unless(blends, G), d, shape, grad);
  }

  // unblend_factor(alpha) where the pixel blends, else 1 (selected, not taken of 1: the GPU's
  // approximate reciprocal of 1 need not be exact).
  template <typename Mask>
  DGRD_HD static T unblend_factor_if(Mask blends, T alpha) {
    return select(blends, unblend_factor(alpha), T(1));
  }

  // `unblend` under a mask, as step_if: the walk unchanged and dL/dalpha and grad.feature 0
  // where `blends` is false. `factor` is unblend_factor_if(blends, alpha).
  template <typename Mask>
  DGRD_HD T unblend_if(Mask blends, T alpha, T factor, Vec4<T> feature, SplatGrad<T>& grad) {
    const T dalpha = unblend(zero_unless(blends, alpha), factor, feature, grad);
    Vec4<T>& df = grad.feature;
    df = {zero_unless(blends, df.x), zero_unless(blends, df.y), zero_unless(blends, df.z),
          zero_unless(blends, df.w)};
    return zero_unless(blends, dalpha);
  }

  // The first half of `step`: recovers T_i (left in `transmittance`), sets grad.feature and
  // returns dL/dalpha_i of the colour, depth and weight, so that other blended quantities
  // (feature channels) can add theirs before `alpha_grad_to_splat`. `factor` is
  // unblend_factor(alpha), which they share.
  DGRD_HD T unblend(T alpha, T factor, Vec4<T> feature, SplatGrad<T>& grad) {
    transmittance = transmittance * factor;
    const T w = alpha * transmittance;
    const T f[kWalkedFeatures] = {feature.x, feature.y, feature.z, feature.w};
    T dalpha = T(0);
    for (int k = 0; k < kWalkedFeatures; ++k) {
      dalpha += (f[k] - behind[k]) * upstream[k];
      // This splat joins those behind the next one in front. (Taken here rather than at the
      // next step, where it once was, so that no alpha and features are carried across steps:
      // on the GPU, six fewer registers moved at every step.)
      behind[k] = alpha * f[k] + (T(1) - alpha) * behind[k];
    }
    dalpha = dalpha * transmittance + final_grad * factor;

    grad.feature = {w * upstream[0], w * upstream[1], w * upstream[2], w * upstream[kDepthFeature]};
    return dalpha;
  }
};

// ------------------------------------------------------------------ feature channels, median
// Both are optional outputs (issue 12): the render specializes on them at compile time, so the
// plain colour/depth/weight path is unchanged.

// Feature channels: any number of per-Gaussian values blended with the colour's weights,
// sum_i w_i F_i, with no background and no normalization. `channels` may be a chunk of them.
template <typename T>
DGRD_HD void blend_features(T* sum, const T* feature, int channels, T w) {
  for (int c = 0; c < channels; ++c) sum[c] += w * feature[c];
}

// Reverse walk of the feature channels of one pixel with upstream gradient g. Since
// w_j = alpha_j T_j and every T_j behind splat i holds the factor (1 - alpha_i),
//   dL/dalpha_i = T_i (F_i . g) - (sum_{j behind i} w_j F_j . g) / (1 - alpha_i),
// so one scalar sum carries all channels; dL/dF_i = w_i g. Channels split into chunks simply
// add their parts of dL/dalpha_i (the sum is linear in g).
template <typename T>
struct FeatureBackward {
  T behind;  // sum over the splats behind the current one of w_j (F_j . g)

  DGRD_HD void reset() { behind = T(0); }

  // F_i . g. The features may be plain values while T is the CPU's eight lanes of g.
  template <typename S>
  DGRD_HD static T dot(const S* feature, const T* upstream, int channels) {
    T feature_dot = T(0);
    for (int c = 0; c < channels; ++c) feature_dot += feature[c] * upstream[c];
    return feature_dot;
  }

  // Splat i, with T_i = `transmittance`, w_i = alpha T_i and F_i . g = `feature_dot`, taken off
  // the front of those already visited; returns its part of dL/dalpha_i. `factor` is
  // unblend_factor(alpha).
  DGRD_HD T step(T alpha, T factor, T transmittance, T feature_dot) {
    const T dalpha = transmittance * feature_dot - behind * factor;
    behind += alpha * transmittance * feature_dot;
    return dalpha;
  }
  DGRD_HD T step(T alpha, T factor, T transmittance, const T* feature, const T* upstream,
                 int channels) {
    return step(alpha, factor, transmittance, dot(feature, upstream, channels));
  }
};

// Median depth: the z of the splat whose blend takes T from above 0.5 to 0.5 or below (T only
// decreases, so at most one splat of a pixel crosses). Its gradient goes to that z alone.
// (A bitwise & of the two tests, so that on the CPU's lanes it gives a lane mask.)
template <typename T>
DGRD_HD auto crosses_median(T transmittance_before, T transmittance_after) {
  return (transmittance_before > T(0.5)) & (transmittance_after <= T(0.5));
}

// The median of one pixel during the forward walk: its depth and 1 + the list position of
// its splat (0 while T > 0.5, and in the end where T never reaches 0.5).
template <typename T>
struct MedianDepth {
  T depth;
  int position;

  DGRD_HD void reset() {
    depth = T(0);
    position = 0;
  }
  DGRD_HD void update(T transmittance_before, T transmittance_after, T z, int position_) {
    if (crosses_median(transmittance_before, transmittance_after)) {
      depth = z;
      position = position_;
    }
  }
};

// The touch count (MonoGS's n_touched, an optional output): a splat touches a pixel where it is
// blended and the transmittance behind it stays above 0.5, so the splats in front of the
// median's. T only decreases, so a pixel's walk for the count ends at its first blended splat
// that fails the test (it saturates no pixel first: kTransmittanceMin is far below 0.5).
// (On the CPU's lanes it gives a lane mask.)
template <typename T>
DGRD_HD auto touches(T transmittance_after) {
  return transmittance_after > T(0.5);
}

// The contribution statistics (an optional output), what pruning and densification by
// contribution read (LightGaussian's and Mini-Splatting's importance, RadSplat's pruning,
// Mini-Splatting's blur split): over the pixels where a Gaussian is blended, the sum and the
// largest of its weights w = alpha T, the number of those pixels, the number where its weight
// is the pixel's largest (the first in depth order among equal ones), and the sum of its
// opacity times the transmittance in front of it, o T (LightGaussian's global significance, its
// rasterizer's `important_score`; o as the render uses it, compensated where antialiasing is
// on). A pixel walks as the render does, blending up to its first splat that would saturate it.
// kContributionValues (config.h) values a Gaussian, in that order.

// One pixel's largest weight so far and what names its splat (a list position, a Gaussian).
template <typename T, typename Id>
struct DominantSplat {
  T weight = T(0);
  Id id{};

  DGRD_HD void update(T w, Id id_) {
    if (w > weight) {
      weight = w;
      id = id_;
    }
  }
  // Whether any splat was blended: a blended splat weighs more than 0 (alpha >= 1/255, T >=
  // kTransmittanceMin).
  DGRD_HD bool found() const { return weight > T(0); }
};

}  // namespace dgrd
