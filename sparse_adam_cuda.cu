// Sparse Adam on CUDA: one thread per parameter entry, so that a warp reads contiguous memory
// whatever the row size; rows that are not visible are skipped by every thread of theirs.
// Compiled by nvcc, and by the host compiler for the emulated CUDA backend (tests).
#ifndef DGRD_EMULATE_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "cuda_rasterizer/cuda_emulation.h"
#include "sparse_adam.h"

namespace dgrd {

namespace {

constexpr int kAdamThreads = 256;

__global__ void sparse_adam_kernel(SparseAdamRows<float> t, AdamCoefficients<float> k) {
  const int64_t index = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= t.rows * t.row_size || !t.visible[index / t.row_size]) return;
  adam_update_entry(k, t, index);
}

}  // namespace

void sparse_adam_step_cuda(at::Tensor param, const at::Tensor& grad, at::Tensor exp_avg,
                           at::Tensor exp_avg_sq, const at::Tensor& visible, double lr,
                           double beta1, double beta2, double eps) {
  TORCH_CHECK_TYPE(param.scalar_type() == at::kFloat,
                   "SparseGaussianAdam: the CUDA kernel takes float32, got ", param.scalar_type());
#ifdef DGRD_EMULATE_CUDA
  const cudaStream_t stream = nullptr;
#else
  const c10::cuda::CUDAGuard guard(param.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
#endif
  const auto rows = rows_of<float>(param, grad, exp_avg, exp_avg_sq, visible);
  const int64_t entries = rows.rows * rows.row_size;
  const int64_t blocks = (entries + kAdamThreads - 1) / kAdamThreads;
  if (blocks == 0) return;
  DGRD_LAUNCH(sparse_adam_kernel, unsigned(blocks), kAdamThreads, stream)(
      rows, AdamCoefficients<float>::make(lr, beta1, beta2, eps));
  const cudaError_t launch = cudaGetLastError();
  TORCH_CHECK(launch == cudaSuccess, "SparseGaussianAdam: the CUDA step failed to launch: ",
              cudaGetErrorString(launch));
}

}  // namespace dgrd
