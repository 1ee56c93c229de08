// 3DGS-MCMC's relocation on the CPU (an OpenMP loop over the Gaussians) and the dispatch by
// device.
#include "mcmc.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty_like.h>

namespace dgrd {

namespace {

template <typename T>
void relocate_cpu(const RelocationRows<T>& t) {
  // Most rows take a few dozen flops; a row of a nearly opaque Gaussian shared by many copies
  // takes a quadrature of some 200 nodes, hence dynamic scheduling.
#pragma omp parallel for schedule(dynamic, 1024) if (t.rows > 4096)
  for (int64_t row = 0; row < t.rows; ++row) relocate_row(t, row);
}

}  // namespace

RelocationTensors RelocationTensors::make(const at::Tensor& opacity, const at::Tensor& scale,
                                          const at::Tensor& copies) {
  TORCH_CHECK(opacity.dim() == 1 && opacity.is_contiguous() && opacity.is_floating_point(),
              "compute_relocation: opacity must be a contiguous 1-D floating tensor");
  TORCH_CHECK(scale.dim() >= 1 && scale.size(0) == opacity.size(0) && scale.is_contiguous() &&
                  scale.scalar_type() == opacity.scalar_type() &&
                  scale.device() == opacity.device(),
              "compute_relocation: scale must be contiguous, with a row per opacity, of its "
              "dtype and device");
  TORCH_CHECK(copies.dim() == 1 && copies.size(0) == opacity.size(0) &&
                  copies.is_contiguous() && copies.scalar_type() == at::kLong &&
                  copies.device() == opacity.device(),
              "compute_relocation: copies must be a contiguous int64 tensor with an entry per "
              "opacity, on its device");
  return {at::empty_like(opacity), at::empty_like(scale)};
}

std::tuple<at::Tensor, at::Tensor> compute_relocation(const at::Tensor& opacity,
                                                      const at::Tensor& scale,
                                                      const at::Tensor& copies) {
  if (opacity.is_cuda()) {
#ifdef DGRD_WITH_CUDA
    return compute_relocation_cuda(opacity, scale, copies);
#else
    TORCH_CHECK(false, "diff_gaussian_rasterization_depth was built without CUDA");
#endif
  }
  const RelocationTensors out = RelocationTensors::make(opacity, scale, copies);
  AT_DISPATCH_FLOATING_TYPES(opacity.scalar_type(), "compute_relocation", [&] {
    relocate_cpu(out.rows<scalar_t>(opacity, scale, copies));
  });
  return {out.new_opacity, out.new_scale};
}

}  // namespace dgrd
