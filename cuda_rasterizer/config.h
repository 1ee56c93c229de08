// Constants of the rasterizer: tile size and the thresholds of the forward (SPEC 4), in one place.
#pragma once

#if defined(__CUDACC__)
#define DGRD_HD __host__ __device__ __forceinline__
#elif defined(_MSC_VER) && !defined(__clang__)
// MSVC leaves the blend steps out of line on the CPU's lanes otherwise: a call a splat, with
// every register spilled around it (backward about 25% slower, tools/check_msvc_build.py).
#define DGRD_HD __forceinline
#else
#define DGRD_HD inline
#endif

namespace dgrd {

constexpr int kTileSize = 16;          // tiles are kTileSize x kTileSize pixels
constexpr int kTilePixels = kTileSize * kTileSize;
// CUDA's split tile lists (TileSplits): a part holds at most 2^24 positions, which a float holds
// exactly (PartComposite stores the last blended one among floats).
constexpr int kMaxSplitLength = 1 << 24;
constexpr int kColorChannels = 3;
constexpr int kMaxShCoeffs = 16;       // SH degree 3
// A lens's distortion coefficients at most: OpenCV's pinhole (k1, k2, p1, p2, k3, k4, k5, k6);
// the fisheye's four are the first.
constexpr int kLensCoefficients = 8;

// Blended per-pixel features: colour (3), view-space depth, and the constant 1 whose blend is
// the weight map. One recurrence serves all five (SPEC 6).
constexpr int kFeatures = 5;
constexpr int kDepthFeature = 3;
constexpr int kWeightFeature = 4;
// The features the backward's walk carries sums of: all but the weight, whose gradient has a
// closed form (PixelBackward).
constexpr int kWalkedFeatures = kWeightFeature;
// The contribution statistics a Gaussian (blend.h, DominantSplat): weight sum, weight max,
// pixels, dominated pixels, opacity-transmittance sum.
constexpr int kContributionValues = 5;

constexpr double kNearPlane = 0.2;           // culled if view z <= this
constexpr double kHomEps = 1e-7;             // ndc = hom.xyz / (hom.w + kHomEps)
constexpr double kFrustumClamp = 1.3;        // t.x/t.z clamped to +-1.3 tanfovx in the Jacobian
// The fisheye's angle terms (preprocess.h, LensTerms) come from their series in
// u = (rho / z)^2 below this u, where the closed forms cancel; that many terms reach double's
// precision there (0.1^17).
constexpr double kFisheyeSeriesBound = 0.1;
constexpr int kFisheyeSeriesTerms = 17;
// The 2D low-pass filter: a variance in px^2 added to the 2D covariance's diagonal. The original's
// 0.3 is the default of the settings' kernel_size (Mip-Splatting trains with 0.1).
constexpr double kDefaultKernelSize = 0.3;
constexpr double kAntialiasMinRatio = 2.5e-5;
constexpr double kMinEigenSlack = 0.1;       // lambda = mid + sqrt(max(0.1, mid^2 - det))
constexpr double kSigmaExtent = 3.0;         // radius = ceil(3 sqrt(lambda))
constexpr double kMaxRadius = 2147483520.0;  // radii are int32: capped at the last float < 2^31
constexpr double kAlphaMax = 0.99;
constexpr double kAlphaMin = 1.0 / 255.0;
constexpr double kTransmittanceMin = 1e-4;

}  // namespace dgrd
