// The CPU backend: the shared per-Gaussian and per-pixel math run in plain (OpenMP) loops.
#pragma once

#include <cstdint>

#include "types.h"

namespace dgrd {
namespace cpu {

template <typename T>
void preprocess(const Camera<T>& cam, const GaussianInputs<T>& in, const GaussianState<T>& state);

// Fills point_list (sum of tiles_touched entries) and tile_ranges (tiles x 2): each tile's
// Gaussians in ascending depth, ties by index.
template <typename T>
void bin_gaussians(const Camera<T>& cam, int count, const GaussianState<T>& state, int* point_list,
                   int* tile_ranges);

// Also renders the optional outputs that `extra` asks for (none: the plain render). count: the
// number of Gaussians (the state arrays' length).
template <typename T>
void render(const Camera<T>& cam, const GaussianState<T>& state, int count, TileLists lists,
            const PixelBuffers<T>& px, const OptionalOutputs<T>& extra);

// Adds to touch_count (zeroed by the caller, one entry a Gaussian) the pixels each Gaussian
// touches (`touches`, blend.h: MonoGS's n_touched), from the forward's state and tile lists.
// count: the number of Gaussians (the state arrays' length).
template <typename T>
void count_touches(const Camera<T>& cam, const GaussianState<T>& state, int count,
                   TileLists lists, int* touch_count);

// Writes each Gaussian's contribution statistics (kContributionValues a Gaussian, blend.h:
// weight sum, weight max, pixels, dominated pixels, opacity-transmittance sum; contribution:
// count x 5, all written) from
// the forward's state and tile lists (pairs: their length). The same values on any number of
// threads: each (tile, splat) pair's tally is added into its Gaussian in list order. Also
// writes every pixel's dominant Gaussian (dominant: height x width, the index of the Gaussian
// whose weight is the pixel's largest, the first in depth order among equal ones; -1 where
// nothing is blended).
template <typename T>
void gaussian_contributions(const Camera<T>& cam, const GaussianState<T>& state, int count,
                            TileLists lists, int64_t pairs, T* contribution, int* dominant);

// The opacity field (opacity_field.h), in three steps: each of `count` points' row and the tile
// that sees it (keys: its tile; tiles_x * tiles_y and an opacity of 1 where none does); each
// Gaussian's ray quadric; then the opacity (1 - transmittance) of every point binned to a tile
// (order: point ids by tile, point_ranges: tiles + 1 offsets into it), from the forward's state
// (count rows) and tile lists.
template <typename T>
void project_points(const Camera<T>& cam, const T* points, int count, PointOnScreen<T>* rows,
                    int* keys, T* opacity);
template <typename T>
void ray_quadrics(const Camera<T>& cam, const GaussianInputs<T>& in, RayQuadric<T>* quadrics);
template <typename T>
void point_opacity(const Camera<T>& cam, const GaussianState<T>& state, int count,
                   TileLists lists, const RayQuadric<T>* quadrics,
                   const PointOnScreen<T>* points, const int* order, const int* point_ranges,
                   T* opacity);

// Sums each Gaussian's SplatGrad over the pixels it was blended into (splat_grads: P entries,
// all written), including the parts from the optional outputs' upstream gradients, and the
// features' gradient when the feature map has one.
template <typename T>
void render_backward(const Camera<T>& cam, const GaussianState<T>& state, TileLists lists,
                     const PixelBuffers<T>& px, PixelGrads<T> grads,
                     const OptionalGrads<T>& extra, int count, SplatGrad<T>* splat_grads);

// Switches for the float path's techniques, on by default (the lanes where they pay: not on an
// x86 CPU without AVX2); the benchmark turns each off alone to measure what it is worth
// (benchmarks/cpu_bench.py --ablation).
struct CpuTuning {
  bool lanes = true;          // eight pixels at once (else the scalar per-pixel loop)
  bool power_bound = true;    // reject splats by their power before the exponential
};
CpuTuning& cpu_tuning();

// Whether this build's lanes can run on this CPU: not where MSVC built them (AVX2 alone) and
// the CPU lacks AVX2. Where they cannot, `lanes` set on gives the per-pixel loop.
bool lanes_run_here();

// What a float render does, counted (for the benchmark's work model): tile pairs, splat tests
// at pixels up to where each pixel stops, those that pass the power bound (an exp each), blends,
// and the splat tests the eight-lane groups run (a group runs until its last pixel stops).
struct RenderWork {
  int64_t pairs, evaluations, exps, blends, lane_evaluations;
};
RenderWork count_render_work(const Camera<float>& cam, const GaussianState<float>& state,
                             int count, TileLists lists);

// camera: null, or where the camera gradient summed over all Gaussians is written.
template <typename T>
void preprocess_backward(const Camera<T>& cam, const GaussianInputs<T>& in, const int* radii,
                         const SplatGrad<T>* splat_grads, const GaussianGrads<T>& out,
                         CameraGrad<T>* camera);

}  // namespace cpu
}  // namespace dgrd
