// PyTorch glue of 3DGS-MCMC's relocation: one entry point, dispatched by device.
#pragma once

#include <ATen/core/Tensor.h>  // not torch/extension.h: see rasterize_points.h

#include <tuple>

#include "cuda_rasterizer/relocation.h"

namespace dgrd {

// The raw view of checked tensors: P Gaussians, each an opacity, a copy count and a row of
// `axes` scales; the results are written to new_opacity and new_scale, laid out the same way.
template <typename T>
struct RelocationRows {
  const T* opacity;
  const T* scale;
  const int64_t* copies;
  T* new_opacity;
  T* new_scale;
  int64_t rows;
  int64_t axes;
};

template <typename T>
DGRD_HD void relocate_row(const RelocationRows<T>& t, int64_t row) {
  const Relocation r = relocate(double(t.opacity[row]), t.copies[row]);
  t.new_opacity[row] = T(r.opacity);
  for (int64_t axis = row * t.axes; axis < (row + 1) * t.axes; ++axis)
    t.new_scale[axis] = T(r.scale_factor * double(t.scale[axis]));
}

// (new_opacity (P,), new_scale (P, K)) for opacity (P,) in [0, 1], scale (P, K) and copies
// (P,) int64 >= 1, all contiguous on one device, opacity and scale of one floating type. The
// Python caller (mcmc.py) has named every argument error already; these checks guard the raw
// pointers.
std::tuple<at::Tensor, at::Tensor> compute_relocation(const at::Tensor& opacity,
                                                      const at::Tensor& scale,
                                                      const at::Tensor& copies);

#if defined(DGRD_WITH_CUDA) || defined(DGRD_EMULATE_CUDA)
std::tuple<at::Tensor, at::Tensor> compute_relocation_cuda(const at::Tensor& opacity,
                                                           const at::Tensor& scale,
                                                           const at::Tensor& copies);
#endif

// Shared by the two: the checks, the outputs and their raw view.
struct RelocationTensors {
  at::Tensor new_opacity, new_scale;
  static RelocationTensors make(const at::Tensor& opacity, const at::Tensor& scale,
                                const at::Tensor& copies);
  template <typename T>
  RelocationRows<T> rows(const at::Tensor& opacity, const at::Tensor& scale,
                         const at::Tensor& copies) const {
    const int64_t rows = opacity.numel();
    return {opacity.data_ptr<T>(), scale.data_ptr<T>(), copies.data_ptr<int64_t>(),
            new_opacity.data_ptr<T>(), new_scale.data_ptr<T>(), rows,
            rows == 0 ? 0 : scale.numel() / rows};
  }
};

}  // namespace dgrd
