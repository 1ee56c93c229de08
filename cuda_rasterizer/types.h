// Plain structs passed between the glue, the backends and the shared math (no PyTorch types).
#pragma once

#include <cstdint>

#include "config.h"
#include "vector_math.h"

namespace dgrd {

// Everything the per-Gaussian math needs to know about the view. Pointers address memory of
// the backend's device (host memory for the CPU backend), so no matrix is read back to the host.
template <typename T>
struct Camera {
  const T* viewmatrix;  // 16, world -> view as [p, 1] @ M (the original's transposed layout)
  const T* projmatrix;  // 16, world -> clip, same layout
  const T* campos;      // 3
  const T* background;  // 3
  int width, height;
  int tiles_x, tiles_y;
  T tanfovx, tanfovy;
  T focal_x, focal_y;  // px per unit of x / z (perspective), of x (orthographic), per radian
                       // off the axis (fisheye)
  T scale_modifier;
  int sh_degree;
  // The 2D low-pass filter's variance (px^2), added to the 2D covariance. The settings' flags
  // and filter have their defaults, so that a Camera filled field by field (the C++ checks)
  // never reads an unset one.
  T kernel_size = T(kDefaultKernelSize);
  bool antialiasing = false;
  bool inverse_depth = false;  // the depth channel blends 1/z, not z (the 2024 upstream's invdepth)
  // An orthographic camera (gsplat's camera_model="ortho"): the projection's Jacobian is the
  // constant diag(focal_x, focal_y), tanfovx and tanfovy the view's half-width and half-height
  // in view-space units; projmatrix must be the orthographic projection of the same extent.
  bool orthographic = false;
  // An equidistant fisheye (Fisheye-GS's is_fisheye, gsplat's camera_model="fisheye"): a
  // view-space point at angle theta off the optical axis lands focal * theta px from the
  // principal point, which is where projmatrix (the pinhole projection of the same focal
  // lengths) puts the axis (preprocess.h, lens_centre).
  bool fisheye = false;
  // OpenCV's fisheye distortion (COLMAP's OPENCV_FISHEYE) on that fisheye: the point lands
  // focal * theta_d px off the principal point, theta_d = theta (1 + k1 theta^2 + k2 theta^4 +
  // k3 theta^6 + k4 theta^8) (preprocess.h, distort_fisheye_terms). Past
  // fisheye_max_angle, the first angle where theta_d stops growing, the image folds back on
  // itself: Gaussians there are culled. Off (the plain equidistant fisheye) costs nothing.
  bool fisheye_distorted = false;
  T fisheye_k[4] = {T(0), T(0), T(0), T(0)};
  T fisheye_max_angle = T(0);
  // OpenCV's pinhole distortion (COLMAP's OPENCV, FULL_OPENCV and RADIAL, OpenCV's
  // distCoeffs) on the perspective camera: the normalized point (a, b) = (x, y) / z moves to
  // (a L + tau_x, b L + tau_y), L = (1 + k1 u + k2 u^2 + k3 u^3) / (1 + k4 u + k5 u^2 + k6 u^3)
  // with u = a^2 + b^2, tau the tangential terms (2 p1 a b + p2 (u + 2 a^2),
  // p1 (u + 2 b^2) + 2 p2 a b), and lands at c + focal * that, c where projmatrix puts the
  // axis: the fisheye's path with L for its K (preprocess.h, pinhole_lens_terms). pinhole_k
  // holds (k1, k2, p1, p2, k3, k4, k5, k6), OpenCV's order. Past pinhole_max_u, where the
  // radial part stops growing (or its denominator reaches 0), the image folds back on itself:
  // Gaussians there are culled. Off (the plain pinhole, projmatrix's projection) costs nothing.
  bool pinhole_distorted = false;
  T pinhole_k[kLensCoefficients] = {};
  T pinhole_max_u = T(0);
  // Mip-Splatting's subpixel_offset (its --ray_jitter): H x W x 2, pixel (x, y) sampled at
  // (x + o.x, y + o.y) instead of its own coordinates; null: every pixel at its own.
  // sample_margin is the largest |o|: the reach boxes widen by it (and by the rounding of
  // x + o, reach_rect), so that a splat is skipped only where no sample point can blend it.
  const T* subpixel_offset = nullptr;
  T sample_margin = T(0);

  // A point lands at the principal point plus focal times a function of its direction (the
  // fisheye, the distorted pinhole: preprocess.h's lens path), not at projmatrix's projection.
  DGRD_HD bool lens() const { return fisheye || pinhole_distorted; }

  // Where pixel (x, y) of the image samples the splats.
  DGRD_HD Vec2<T> sample_point(int x, int y) const {
    if (!subpixel_offset) return {T(x), T(y)};
    const T* o = subpixel_offset + 2 * (int64_t(y) * width + x);
    return {T(x) + o[0], T(y) + o[1]};
  }
};

// The per-Gaussian inputs, contiguous; an absent input is a null pointer.
template <typename T>
struct GaussianInputs {
  int count;
  const T* means3D;         // P x 3
  const T* opacities;       // P
  const T* dc;              // P x 3: SH coefficient 0 given apart (the 2024 API), or null
  const T* shs;             // P x sh_coeffs x 3; with dc, P x (sh_coeffs - 1) x 3; or null
  int sh_coeffs;            // SH coefficients a Gaussian has in all, dc included
  const T* colors_precomp;  // P x 3, or null
  const T* scales;          // P x 3, or null (then cov3D_precomp is given)
  const T* rotations;       // P x 4 quaternions (w, x, y, z)
  const T* cov3D_precomp;   // P x 6 upper triangle, or null
};

// A query point as the walk reads it: its position on screen (pixel units, the means' own
// projection), its ray (x/z, y/z, 1) in view space, and its view depth z.
template <typename T>
struct PointOnScreen {
  Vec2<T> pixel;
  Vec2<T> ray;
  T depth;
};

// A Gaussian along the rays through it, in view space: density exp(-q/2) with
// q(x) = (x - mean)^T Sigma^-1 (x - mean), kept as Sigma's adjugate and determinant
// (Sigma^-1 = adjugate / det) so that a flat Gaussian (det 0) still has its peak on every ray.
template <typename T>
struct RayQuadric {
  Sym3<T> adjugate;
  Vec3<T> mean;
  T det;
};

// Half-open rectangle of tiles [x0, x1) x [y0, y1).
struct TileRect {
  int x0, y0, x1, y1;
  DGRD_HD int area() const { return (x1 - x0) * (y1 - y0); }
};

// What the preprocess computes for one Gaussian and the render reads. A Gaussian is culled
// when radius == 0.
template <typename T>
struct ProjectedGaussian {
  Vec2<T> mean2d;        // pixel coordinates
  Vec4<T> conic_opacity; // inverse 2D covariance (a, b, c) and the opacity actually blended
  Vec4<T> feature;       // colour (r, g, b) and view depth z (1/z under inverse_depth): blended
  int radius;
  TileRect rect;          // the tiles it is binned into (visible_tiles)
  // The number of tiles it is binned into: none where it is culled (radius 0).
  DGRD_HD int tile_count() const { return radius > 0 ? rect.area() : 0; }
};

// Per-Gaussian output arrays of the preprocess (structure of arrays).
template <typename T>
struct GaussianState {
  int* radii;
  Vec2<T>* means2d;
  Vec4<T>* conic_opacity;
  Vec4<T>* features;       // null where colors and depths stand in for it (below)
  int64_t* tiles_touched;  // forward only: the number of tiles in rects[i]
  TileRect* rects;         // forward only: read back by the binning
  // The CUDA backend's, where the caller gives the colours: each Gaussian's colour read where
  // the caller's (P, 3) tensor holds it and its depth stored alone, so that the forward keeps
  // 12 bytes a Gaussian less for the backward than a copy of both in features.
  const T* colors = nullptr;
  T* depths = nullptr;

  DGRD_HD Vec4<T> feature(int i) const {
    if (features) return features[i];
    return {colors[3 * i], colors[3 * i + 1], colors[3 * i + 2], depths[i]};
  }
  DGRD_HD T depth(int i) const { return features ? features[i].w : depths[i]; }

  DGRD_HD void store(int i, const ProjectedGaussian<T>& g) const {
    store_binning(i, g);
    store_row(i, g);
  }
  // What the binning reads, and the radius: Gaussian i's.
  DGRD_HD void store_binning(int i, const ProjectedGaussian<T>& g) const {
    radii[i] = g.radius;
    rects[i] = g.rect;
    tiles_touched[i] = g.tile_count();
  }
  // What the render reads, in row `row`: Gaussian i's own, or the CUDA compact state's row
  // (the Gaussian's rank by depth).
  DGRD_HD void store_row(int row, const ProjectedGaussian<T>& g) const {
    means2d[row] = g.mean2d;
    conic_opacity[row] = g.conic_opacity;
    if (features)
      features[row] = g.feature;
    else
      depths[row] = g.feature.w;  // row i (never compact): the colour is colors[i], as
                                  // gaussian_color reads it
  }
  DGRD_HD bool has_rows() const { return means2d != nullptr; }
};

// Gradient of the loss with respect to one Gaussian's screen-space quantities: what the render
// backward produces (summed over pixels) and the preprocess backward consumes.
template <typename T>
struct SplatGrad {
  Vec2<T> mean2d;   // pixel units
  Sym2<T> conic;    // d/d(conic a, b, c); b is the single off-diagonal parameter
  T opacity;        // d/d(blended opacity)
  Vec4<T> feature;  // d/d(r, g, b, blended depth value)
};
constexpr int kSplatGradValues = 10;

// Output gradient arrays of the preprocess backward; null where the input is absent.
template <typename T>
struct GaussianGrads {
  T* means3D;         // P x 3
  T* means2D;         // P x 3, d/d(ndc x, ndc y), third component 0
  T* opacities;       // P
  T* dc;              // P x 3, when the inputs give dc apart
  T* shs;             // shaped as GaussianInputs::shs
  T* colors_precomp;  // P x 3
  T* scales;          // P x 3
  T* rotations;       // P x 4
  T* cov3D_precomp;   // P x 6
};

// Gradient of the loss with respect to the camera, in the layout of the settings' flat tensors.
// The preprocess backward writes one Gaussian's share into it when asked (a non-null pointer);
// the backends sum the shares over Gaussians.
template <typename T>
struct CameraGrad {
  T viewmatrix[16];
  T projmatrix[16];
  T campos[3];
  T tanfov[2];  // d/d(tanfovx), d/d(tanfovy): the focal lengths, W / (2 tanfovx) and likewise
  // d/d(the lens coefficients) in the settings' order: the distorted fisheye's k1 .. k4
  // (Camera::fisheye_k), or the distorted pinhole's k1, k2, p1, p2, k3, k4, k5, k6
  // (Camera::pinhole_k); 0 otherwise
  T distortion[kLensCoefficients];
};
constexpr int kCameraGradValues = 37 + kLensCoefficients;

// Sorted tile lists: tile t holds point_list[tile_ranges[2t] .. tile_ranges[2t + 1]), rows of
// the Gaussians' state. The CUDA backend's compact state (gpu::CudaTuning::compact_state) keeps
// a row for each Gaussian with a tile, in depth order, and `gaussians` names each row's Gaussian
// (where the inputs, features and gradients lie); null: row i is Gaussian i.
struct TileLists {
  const int* point_list;
  const int* tile_ranges;
  const int* gaussians = nullptr;
  DGRD_HD int gaussian(int row) const { return gaussians ? gaussians[row] : row; }
};

// Long tile lists cut into parts (CUDA): a list of n > L splats has parts_of(n) parts of L
// positions (the last one shorter), split at begin + L, begin + 2 L, ... Splits lie at least L
// apart in the sorted pair array, so the one at global position g has slot g / L - 1 of its own
// (slot_of), under (pairs - 1) / L slots. gpu::plan_splits fills `parts` for every slot: the
// tile and index c of the part that ends at the slot's split, or tile -1 where the slot's window
// of L positions holds none. The backward walks each such part with a block of its own (the
// tile's block takes the last part), from the state the forward saved in `state` at the split
// (PixelAccum::save_split). The split forward (gpu::CudaTuning::split_forward) also walks the
// parts of a list at once, one block each, leaving each part's composite in the slot of the
// split that ends it (`composite`, PartComposite); a second kernel chains them per pixel, and
// the block of the part where a pixel stops walks that part for it, from its true state there;
// its parts may be shorter than the backward's (state_every), so that its two kernels' longest
// path is about one backward part.
struct TileSplits {
  int length;    // L: positions per part, a multiple of kTilePixels; 0: lists are not split
  int capacity;  // slots: (pairs - 1) / L
  int* header;   // on the device: [L] (the backward's host side knows only the capacity)
  int* parts;    // capacity x 2: (tile, index of the part ending at the slot's split) or (-1, 0)
  float* state;  // capacity x kSplitValues x kTilePixels
  float* composite;  // split forward: capacity x kCompositeValues x kTilePixels; else null
  // The split forward's own splits (gpu::forward_split_length) may be shorter than the
  // backward's, whose state (`state`, kept for the backward) then lies at every state_every-th
  // of them: state_slot. The backward's own splits: 1.
  int state_every = 1;
  // The order of a grid of a block per tile and per slot (ListPart): the slots' blocks first
  // (gpu::CudaTuning::parts_first, the backward's kernels), each a whole part of L positions,
  // the longest blocks of the grid, so that they start in its first wave rather than after
  // every tile's block, in its last (doc/performance.md, "Block order"); else the tiles' first.
  bool parts_first = false;

  // Per pixel: transmittance, then the sums of the four features the backward walks
  // (save_split: front sums; finish_split: normalized sums behind).
  static constexpr int kSplitValues = 1 + kWalkedFeatures;
  static constexpr int kCompositeValues = 2 + kFeatures;  // P, S, the last blend

  DGRD_HD int parts_of(int n) const {
    return length > 0 && n > length ? (n + length - 1) / length : 1;
  }
  DGRD_HD int slot_of(int64_t position) const { return int(position / length) - 1; }
  // The slot of `state` of the backward's split at `position`.
  DGRD_HD int state_slot(int64_t position) const {
    return int(position / (int64_t(length) * state_every)) - 1;
  }
  // Whether block b of such a grid is a tile's (block_tile), else the slot whose part it walks
  // (block_slot).
  DGRD_HD bool is_tile_block(int b, int tiles) const {
    return parts_first ? b >= capacity : b < tiles;
  }
  DGRD_HD int block_tile(int b) const { return parts_first ? b - capacity : b; }
  DGRD_HD int block_slot(int b, int tiles) const { return parts_first ? b : b - tiles; }
  // The backward's kernels: L from the device header (the host side knows only the capacity).
  DGRD_HD void load_length() {
    if (header) length = header[0];
  }
  // The slot of the split that ends part q of the list that starts at `begin`.
  DGRD_HD int slot_after(int begin, int q) const {
    return slot_of(begin + int64_t(q + 1) * length);
  }
  // Value v of slot e at the tile's pixel `thread`.
  DGRD_HD float& value(int e, int v, int thread) const {
    return state[(int64_t(e) * kSplitValues + v) * kTilePixels + thread];
  }
  DGRD_HD float& composite_value(int e, int v, int thread) const {
    return composite[(int64_t(e) * kCompositeValues + v) * kTilePixels + thread];
  }
};

// Per-pixel outputs and what the backward reads of the forward (all planes H x W, row-major).
// The saved weight and depth are private copies, so users may edit the returned maps.
template <typename T>
struct PixelBuffers {
  T* color;        // 3 x H x W
  T* depth;        // H x W
  T* weight;       // H x W
  T* pixel_state;  // 3 x H x W: final transmittance, weight, depth
  int* n_contrib;  // H x W: 1 + position in the tile's list of the last blended splat

  enum : int { kFinalT = 0, kWeight = 1, kDepth = 2 };
};

// Per-pixel upstream gradients; a null pointer means zero.
template <typename T>
struct PixelGrads {
  const T* color;   // 3 x H x W
  const T* depth;   // H x W
  const T* weight;  // H x W
};

// The optional outputs of issue 12 (SPEC 8): feature channels blended like the colour, and the
// median depth. channels == 0 and null pointers where they are not asked for.
template <typename T>
struct OptionalOutputs {
  int channels;         // C
  const T* features;    // P x C, the per-Gaussian values
  T* feature_map;       // C x H x W
  T* median;            // H x W
  int* median_contrib;  // H x W: 1 + position in the tile's list of the median's splat, 0: none
  // CUDA, split lists (TileSplits): each part's sums ending at split e, capacity x C x 256; null:
  // the feature kernels walk whole lists.
  T* feature_parts = nullptr;

  DGRD_HD bool has_features() const { return channels > 0; }
  DGRD_HD bool has_median() const { return median_contrib != nullptr; }
};

// What the backward of the optional outputs reads and writes; an absent upstream gradient is
// null (then that output costs nothing in the backward).
template <typename T>
struct OptionalGrads {
  int channels;                // C
  const T* features;           // P x C
  const int* median_contrib;   // H x W, from the forward
  const T* feature_map;        // C x H x W upstream, or null
  const T* median;             // H x W upstream, or null
  T* features_grad;            // P x C, all written when feature_map is given
  // CUDA, split lists: each part's sum of w (F . g) per chunk of channels, (tiles + capacity) x
  // chunks x 256 (feature_dots_kernel); null: the feature backward walks whole lists.
  T* feature_dots = nullptr;
  // AbsGS's densification statistic, P x 2 (pixel units), summed into (zeros first): per
  // Gaussian, the sum over pixels of |each pixel's d/d mean2d| of the whole loss (the median's
  // reaches z alone). Null: not asked for, and the backward costs what it did.
  Vec2<T>* mean2d_abs = nullptr;

  DGRD_HD bool has_features() const { return channels > 0 && feature_map != nullptr; }
  DGRD_HD bool has_median() const { return median_contrib != nullptr && median != nullptr; }
};

}  // namespace dgrd
