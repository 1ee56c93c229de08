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

// Also renders the optional outputs that `extra` asks for (none: the plain render).
template <typename T>
void render(const Camera<T>& cam, const GaussianState<T>& state, TileLists lists,
            const PixelBuffers<T>& px, const OptionalOutputs<T>& extra);

// Sums each Gaussian's SplatGrad over the pixels it was blended into (splat_grads: P entries,
// all written), including the parts from the optional outputs' upstream gradients, and the
// features' gradient when the feature map has one.
template <typename T>
void render_backward(const Camera<T>& cam, const GaussianState<T>& state, TileLists lists,
                     const PixelBuffers<T>& px, PixelGrads<T> grads,
                     const OptionalGrads<T>& extra, int count, SplatGrad<T>* splat_grads);

template <typename T>
void preprocess_backward(const Camera<T>& cam, const GaussianInputs<T>& in, const int* radii,
                         const SplatGrad<T>* splat_grads, const GaussianGrads<T>& out);

}  // namespace cpu
}  // namespace dgrd
