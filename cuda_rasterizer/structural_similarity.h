// SSIM (Wang et al. 2004) as 3DGS trains with it: the 11-tap Gaussian window (sigma 1.5), its
// per-pixel formula from the five windowed moments, and that formula's partial derivatives.
// Shared by the CPU loops (fused_ssim.cpp) and the CUDA kernels (fused_ssim_cuda.cu); the
// PyTorch twin is reference.ssim_map_reference.
#pragma once

#include "vector_math.h"

namespace dgrd {

// Half the window: the taps reach this far on each side of the pixel; zero padding beyond the
// image (3DGS's F.conv2d with padding 5).
constexpr int kSsimRadius = 5;
constexpr int kSsimTaps = 2 * kSsimRadius + 1;

// The normalized window exp(-d^2 / 4.5) / sum, by distance d = 0..5 from the centre (double, so
// that float64 runs are not limited by float literals).
DGRD_HD double ssim_tap(int distance) {
  switch (distance) {
    case 0: return 0.26601172486179436;
    case 1: return 0.2130055377112537;
    case 2: return 0.10936068950970002;
    case 3: return 0.03600077212843083;
    case 4: return 0.007598758135239185;
    default: return 0.00102838008447911;
  }
}

// The window's sum of v(-5) .. v(5), v(k) the value k taps from the centre, in one order for
// every backend: the centre, then each pair of equal weights from the inside out.
template <typename T, typename Tap>
DGRD_HD T window_sum(const Tap& v) {
  T sum = T(ssim_tap(0)) * v(0);
  for (int d = 1; d <= kSsimRadius; ++d) sum += T(ssim_tap(d)) * (v(-d) + v(d));
  return sum;
}

// The five windowed moments of a pixel: the means of a and b, and of a^2, b^2 and a b.
template <typename T>
struct SsimMoments {
  T mean_a, mean_b, mean_aa, mean_bb, mean_ab;
};

// The per-pixel SSIM and its partial derivatives in the moments. ssim = A1 A2 / (B1 B2) with
// A1 = 2 mu_a mu_b + C1, A2 = 2 cov + C2, B1 = mu_a^2 + mu_b^2 + C1, B2 = var_a + var_b + C2,
// var_a = E[a^2] - mu_a^2, cov = E[ab] - mu_a mu_b. The derivatives hold the other moments
// fixed (the variances move with the means): what the backward blurs.
template <typename T>
struct SsimPixel {
  T ssim;
  T d_mean_a, d_mean_b;  // d ssim / d mu_a, d mu_b
  T d_mean_sq;           // d ssim / d E[a^2] = d ssim / d E[b^2] = -ssim / B2
  T d_mean_ab;           // d ssim / d E[ab] = 2 ssim / A2
};

template <typename T>
DGRD_HD SsimPixel<T> ssim_pixel(const SsimMoments<T>& m, T c1, T c2) {
  const T var_a = m.mean_aa - m.mean_a * m.mean_a;
  const T var_b = m.mean_bb - m.mean_b * m.mean_b;
  const T cov = m.mean_ab - m.mean_a * m.mean_b;
  const T a1 = T(2) * m.mean_a * m.mean_b + c1;
  const T a2 = T(2) * cov + c2;
  const T b1 = m.mean_a * m.mean_a + m.mean_b * m.mean_b + c1;
  const T b2 = var_a + var_b + c2;
  const T inv_b = T(1) / (b1 * b2);
  const T ssim = a1 * a2 * inv_b;
  // d ssim = ssim (dA1/A1 + dA2/A2 - dB1/B1 - dB2/B2); mu_a moves A1 by 2 mu_b, A2 by
  // -2 mu_b, B1 by 2 mu_a and B2 by -2 mu_a. ssim / A1 and ssim / A2 are written without the
  // division (A2 = 2 cov + C2 may be 0).
  // One division a pixel: 1/B1 = B2 / (B1 B2) and 1/B2 = B1 / (B1 B2).
  const T mixed = T(2) * (a2 - a1) * inv_b;
  const T own = T(2) * ssim * (b1 - b2) * inv_b;
  return {ssim, mixed * m.mean_b + own * m.mean_a, mixed * m.mean_a + own * m.mean_b,
          -a1 * a2 * inv_b * inv_b * b1, T(2) * a1 * inv_b};
}

// The partial derivatives a pixel keeps for the backward, as planes of the saved tensor: the
// first three are all the first image's gradient needs, the fourth the second's.
enum SsimPartial {
  kDMeanA = 0,
  kDMeanSq = 1,
  kDMeanAb = 2,
  kDMeanB = 3,
  kSsimPartialsOfA = 3,
  kSsimPartials = 4
};

// One image's gradient at a pixel from the blurred products of the upstream gradient g and the
// partials: with G_x = window-blur(g * d ssim / d x), dL/da = G_mu_a + 2 a G_sq + b G_ab, and
// dL/db the same with a and b swapped (`own` the image, `other` the other one). The window is
// symmetric, so blurring is its own transpose.
template <typename T>
DGRD_HD T ssim_image_grad(T own, T other, T blurred_own_mean, T blurred_sq, T blurred_ab) {
  return blurred_own_mean + T(2) * own * blurred_sq + other * blurred_ab;
}

}  // namespace dgrd
