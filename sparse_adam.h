// PyTorch glue of the sparse Adam step: one entry point, dispatched by device.
#pragma once

#include <ATen/core/Tensor.h>  // not torch/extension.h: see rasterize_points.h

#include "cuda_rasterizer/sparse_adam.h"

namespace dgrd {

// The raw view of checked tensors: param.numel() / visible.numel() entries per row.
template <typename T>
SparseAdamRows<T> rows_of(at::Tensor& param, const at::Tensor& grad, at::Tensor& exp_avg,
                          at::Tensor& exp_avg_sq, const at::Tensor& visible) {
  const int64_t rows = visible.numel();
  return {param.data_ptr<T>(), grad.data_ptr<T>(), exp_avg.data_ptr<T>(),
          exp_avg_sq.data_ptr<T>(), visible.data_ptr<bool>(), rows, param.numel() / rows};
}

// In place on param, exp_avg and exp_avg_sq (contiguous, same shape, dtype and device as grad):
// the rows (Gaussians) of `visible` (bool, one per row) get one Adam step, the others are not
// touched. The Python caller has named every argument error already; these checks guard the
// raw pointers.
void sparse_adam_step(at::Tensor param, const at::Tensor& grad, at::Tensor exp_avg,
                      at::Tensor exp_avg_sq, const at::Tensor& visible, double lr,
                      double beta1, double beta2, double eps);

#if defined(DGRD_WITH_CUDA) || defined(DGRD_EMULATE_CUDA)
void sparse_adam_step_cuda(at::Tensor param, const at::Tensor& grad, at::Tensor exp_avg,
                           at::Tensor exp_avg_sq, const at::Tensor& visible, double lr,
                           double beta1, double beta2, double eps);
#endif

}  // namespace dgrd
