// PyTorch glue of the fused SSIM: two entry points (forward, backward), dispatched by device.
#pragma once

#include <ATen/core/Tensor.h>  // not torch/extension.h: see rasterize_points.h

#include <cstdint>
#include <tuple>

#include "cuda_rasterizer/structural_similarity.h"

namespace dgrd {

// The raw view of checked tensors: `planes` images of height x width, a and b, row-major, one
// after another (3DGS's (3, H, W) image is three planes). The map and the partials (written by
// the forward where asked: planes of the map's size, kSsimPartialsOfA for the first image's
// gradient, kSsimPartials for both) and the gradients
// (written by the backward where asked) are laid out the same way; a null pointer is a result
// not asked for.
template <typename T>
struct SsimImages {
  const T* a;
  const T* b;
  int64_t planes;
  int height, width;
  T c1, c2;
  DGRD_HD int64_t plane_size() const { return int64_t(height) * width; }
};

template <typename T>
struct SsimForwardOut {
  T* ssim_map;
  T* partials;  // [partial_count][planes][height][width], or null
  int partial_count;
};

template <typename T>
struct SsimBackwardIn {
  const T* grad_map;  // dL / d ssim, the map's layout
  const T* partials;  // as the forward wrote them
  T* grad_a;          // or null
  T* grad_b;          // or null
};

// The per-pixel steps both backends take around their blur: the products a pixel puts into the
// window (five forward: a, b, a^2, b^2, ab; backward the map's gradient times each partial),
// and what a pixel makes of its blurred values m. `at` is the pixel's index in the planes,
// `all` the pixels of all planes (the stride of the partials' planes).
constexpr int kSsimMoments = 5;

template <typename T>
DGRD_HD void forward_products(const SsimImages<T>& im, int64_t at, T* v) {
  const T a = im.a[at], b = im.b[at];
  v[0] = a;
  v[1] = b;
  v[2] = a * a;
  v[3] = b * b;
  v[4] = a * b;
}

template <typename T>
DGRD_HD void store_forward(const SsimImages<T>& im, const SsimForwardOut<T>& out, int64_t all,
                           int64_t at, const T* m) {
  const SsimPixel<T> s = ssim_pixel<T>({m[0], m[1], m[2], m[3], m[4]}, im.c1, im.c2);
  out.ssim_map[at] = s.ssim;
  if (!out.partials) return;
  out.partials[kDMeanA * all + at] = s.d_mean_a;
  out.partials[kDMeanSq * all + at] = s.d_mean_sq;
  out.partials[kDMeanAb * all + at] = s.d_mean_ab;
  if (out.partial_count > kDMeanB) out.partials[kDMeanB * all + at] = s.d_mean_b;
}

// K: the partials kept, kSsimPartialsOfA (the first image's gradient alone) or kSsimPartials.
template <int K, typename T>
DGRD_HD void backward_products(const SsimBackwardIn<T>& in, int64_t all, int64_t at, T* v) {
  const T g = in.grad_map[at];
  for (int k = 0; k < K; ++k) v[k] = g * in.partials[k * all + at];
}

template <int K, typename T>
DGRD_HD void store_backward(const SsimImages<T>& im, const SsimBackwardIn<T>& in, int64_t at,
                            const T* m) {
  const T a = im.a[at], b = im.b[at];
  if (in.grad_a) in.grad_a[at] = ssim_image_grad(a, b, m[kDMeanA], m[kDMeanSq], m[kDMeanAb]);
  if constexpr (K > kDMeanB) {
    if (in.grad_b) in.grad_b[at] = ssim_image_grad(b, a, m[kDMeanB], m[kDMeanSq], m[kDMeanAb]);
  }
}

// (ssim_map (N, H, W), partials (K, N, H, W)) for a and b (N, H, W), contiguous, of one
// floating type and device; K = `partials`: 0 (no gradient: an empty tensor), 3 (the first
// image's gradient) or 4 (both). The Python caller (ssim.py) has named every argument error
// already; these checks guard the raw pointers.
std::tuple<at::Tensor, at::Tensor> ssim_forward(const at::Tensor& a, const at::Tensor& b,
                                                double c1, double c2, int64_t partials);
// (dL/da, dL/db), each an empty tensor where not asked for, from the forward's partials and
// the map's gradient grad_map (N, H, W); dL/db needs all 4 partials.
std::tuple<at::Tensor, at::Tensor> ssim_backward(const at::Tensor& a, const at::Tensor& b,
                                                 const at::Tensor& grad_map,
                                                 const at::Tensor& partials, bool need_a,
                                                 bool need_b);

#if defined(DGRD_WITH_CUDA) || defined(DGRD_EMULATE_CUDA)
std::tuple<at::Tensor, at::Tensor> ssim_forward_cuda(const at::Tensor& a, const at::Tensor& b,
                                                     double c1, double c2, int64_t partials);
std::tuple<at::Tensor, at::Tensor> ssim_backward_cuda(const at::Tensor& a, const at::Tensor& b,
                                                      const at::Tensor& grad_map,
                                                      const at::Tensor& partials, bool need_a,
                                                      bool need_b);
#endif

// Shared by the two backends: the checks, the outputs and their raw view.
struct SsimTensors {
  at::Tensor first, second;  // forward: map and partials; backward: dL/da and dL/db
  static SsimTensors forward(const at::Tensor& a, const at::Tensor& b, int64_t partials);
  static SsimTensors backward(const at::Tensor& a, const at::Tensor& b,
                              const at::Tensor& grad_map, const at::Tensor& partials,
                              bool need_a, bool need_b);

  template <typename T>
  static SsimImages<T> images(const at::Tensor& a, const at::Tensor& b, double c1, double c2) {
    return {a.data_ptr<T>(), b.data_ptr<T>(), a.size(0), int(a.size(1)), int(a.size(2)),
            T(c1), T(c2)};
  }
  template <typename T>
  SsimForwardOut<T> forward_out() const {
    return {first.data_ptr<T>(), second.numel() ? second.data_ptr<T>() : nullptr,
            int(second.numel() ? second.size(0) : 0)};
  }
  template <typename T>
  SsimBackwardIn<T> backward_in(const at::Tensor& grad_map, const at::Tensor& partials) const {
    return {grad_map.data_ptr<T>(), partials.data_ptr<T>(),
            first.numel() ? first.data_ptr<T>() : nullptr,
            second.numel() ? second.data_ptr<T>() : nullptr};
  }
};

}  // namespace dgrd
