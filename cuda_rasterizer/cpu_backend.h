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

template <typename T>
void render(const Camera<T>& cam, const GaussianState<T>& state, TileLists lists,
            const PixelBuffers<T>& px);

// Sums each Gaussian's SplatGrad over the pixels it was blended into (splat_grads: P entries,
// all written).
template <typename T>
void render_backward(const Camera<T>& cam, const GaussianState<T>& state, TileLists lists,
                     const PixelBuffers<T>& px, PixelGrads<T> grads, int count,
                     SplatGrad<T>* splat_grads);

// camera: null, or where the camera gradient summed over all Gaussians is written.
template <typename T>
void preprocess_backward(const Camera<T>& cam, const GaussianInputs<T>& in, const int* radii,
                         const SplatGrad<T>* splat_grads, const GaussianGrads<T>& out,
                         CameraGrad<T>* camera);

}  // namespace cpu
}  // namespace dgrd
