// 3DGS-MCMC's relocation on CUDA: a thread per Gaussian (relocation.h's math in double: it runs
// once every hundred or so training steps, on the few percent of Gaussians being moved).
// Compiled by nvcc, and by the host compiler for the emulated CUDA backend (tests).
#ifndef DGRD_EMULATE_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "cuda_rasterizer/cuda_emulation.h"
#include "mcmc.h"

namespace dgrd {

namespace {

constexpr int kRelocationThreads = 128;

template <typename T>
__global__ void relocation_kernel(RelocationRows<T> t) {
  const int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row < t.rows) relocate_row(t, row);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> compute_relocation_cuda(const at::Tensor& opacity,
                                                           const at::Tensor& scale,
                                                           const at::Tensor& copies) {
#ifdef DGRD_EMULATE_CUDA
  const cudaStream_t stream = nullptr;
#else
  const c10::cuda::CUDAGuard guard(opacity.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
#endif
  const RelocationTensors out = RelocationTensors::make(opacity, scale, copies);
  const int64_t blocks = (opacity.numel() + kRelocationThreads - 1) / kRelocationThreads;
  if (blocks == 0) return {out.new_opacity, out.new_scale};
  TORCH_CHECK(opacity.scalar_type() == at::kFloat || opacity.scalar_type() == at::kDouble,
              "compute_relocation: float32 or float64 tensors, got ", opacity.scalar_type());
  if (opacity.scalar_type() == at::kFloat) {
    DGRD_LAUNCH(relocation_kernel<float>, unsigned(blocks), kRelocationThreads, stream)(
        out.rows<float>(opacity, scale, copies));
  } else {
    DGRD_LAUNCH(relocation_kernel<double>, unsigned(blocks), kRelocationThreads, stream)(
        out.rows<double>(opacity, scale, copies));
  }
  const cudaError_t launch = cudaGetLastError();
  TORCH_CHECK(launch == cudaSuccess, "compute_relocation: the CUDA kernel failed to launch: ",
              cudaGetErrorString(launch));
  return {out.new_opacity, out.new_scale};
}

}  // namespace dgrd
