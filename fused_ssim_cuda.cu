// The fused SSIM on CUDA: a block per 16x16 tile of one plane, the tile and its window's halo
// staged in shared memory, the two separable passes there; one kernel forward, one backward.
// Compiled by nvcc, and by the host compiler for the emulated CUDA backend (tests).
#ifndef DGRD_EMULATE_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <algorithm>

#include "cuda_rasterizer/cuda_emulation.h"
#include "fused_ssim.h"

namespace dgrd {

namespace {

constexpr int kTile = 16;                               // a block's pixels on a side
constexpr int kHalo = kTile + 2 * kSsimRadius;          // ... with the window's reach
constexpr int kTileThreads = kTile * kTile;             // a thread per pixel
constexpr int kMaxGridPlanes = 65535;                   // CUDA's limit on gridDim.z

// The block's K products over its tile and halo (zero outside the image) are in `staged`
// ([K][kHalo][kHalo]); writes their horizontal window sums for the tile's columns to `rows`
// ([K][kHalo][kTile]) and returns, for this thread's pixel, the K values blurred both ways.
// Both passes sum in window_sum's order, as the CPU loops do.
template <int K, typename T>
__device__ void blur_staged(const T* staged, T* rows, T* blurred) {
  const int thread = threadIdx.y * kTile + threadIdx.x;
  for (int i = thread; i < kHalo * kTile; i += kTileThreads) {
    const int r = i / kTile, c = i % kTile;
    for (int k = 0; k < K; ++k) {
      const T* in = staged + (k * kHalo + r) * kHalo + c + kSsimRadius;
      rows[k * kHalo * kTile + i] = window_sum<T>([&](int d) { return in[d]; });
    }
  }
  __syncthreads();
  for (int k = 0; k < K; ++k) {
    const T* in = rows + (k * kHalo + threadIdx.y + kSsimRadius) * kTile + threadIdx.x;
    blurred[k] = window_sum<T>([&](int d) { return in[d * kTile]; });
  }
}

// Each plane's tile of this block: its K products over the tile and halo staged (zero outside
// the image), blurred, and each of the tile's pixels inside the image stored: store(at, its K
// blurred values). The same steps as the CPU's blur_planes, a tile at a time.
template <int K, typename T, typename Products, typename Store>
__device__ void blur_tiles(const SsimImages<T>& im, const Products& products, const Store& store) {
  DGRD_SHARED_ARRAY(T, staged, K * kHalo * kHalo);
  DGRD_SHARED_ARRAY(T, rows, K * kHalo * kTile);
  const int halo_x = int(blockIdx.x) * kTile - kSsimRadius;
  const int halo_y = int(blockIdx.y) * kTile - kSsimRadius;
  const int thread = threadIdx.y * kTile + threadIdx.x;
  const int x = halo_x + kSsimRadius + int(threadIdx.x);
  const int y = halo_y + kSsimRadius + int(threadIdx.y);
  const int64_t n = im.plane_size();
  for (int64_t plane = blockIdx.z; plane < im.planes; plane += gridDim.z) {
    for (int i = thread; i < kHalo * kHalo; i += kTileThreads) {
      const int hy = halo_y + i / kHalo, hx = halo_x + i % kHalo;
      T v[K] = {};
      if (hx >= 0 && hx < im.width && hy >= 0 && hy < im.height)
        products(plane * n + int64_t(hy) * im.width + hx, v);
      for (int k = 0; k < K; ++k) staged[k * kHalo * kHalo + i] = v[k];
    }
    __syncthreads();
    T m[K];
    blur_staged<K>(staged, rows, m);
    if (x < im.width && y < im.height) store(plane * n + int64_t(y) * im.width + x, m);
    __syncthreads();  // the next plane overwrites `staged` and `rows`
  }
}

template <typename T>
__global__ void __launch_bounds__(kTileThreads)
    ssim_forward_kernel(SsimImages<T> im, SsimForwardOut<T> out) {
  const int64_t all = im.planes * im.plane_size();
  blur_tiles<kSsimMoments>(
      im, [&](int64_t at, T* v) { forward_products(im, at, v); },
      [&](int64_t at, const T* m) { store_forward(im, out, all, at, m); });
}

// K: the partials the forward kept (3: the first image's gradient alone; 4: both).
template <int K, typename T>
__global__ void __launch_bounds__(kTileThreads)
    ssim_backward_kernel(SsimImages<T> im, SsimBackwardIn<T> in) {
  const int64_t all = im.planes * im.plane_size();
  blur_tiles<K>(
      im, [&](int64_t at, T* v) { backward_products<K>(in, all, at, v); },
      [&](int64_t at, const T* m) { store_backward<K>(im, in, at, m); });
}

// The launch shape for `planes` images of height x width: a block per tile, the planes along z
// (looped over past CUDA's limit).
struct SsimGrid {
  dim3 grid;
  bool empty;
  static SsimGrid of(int64_t planes, int height, int width) {
    return {dim3(unsigned((width + kTile - 1) / kTile), unsigned((height + kTile - 1) / kTile),
                 unsigned(std::min<int64_t>(std::max<int64_t>(planes, 1), kMaxGridPlanes))),
            planes == 0 || height == 0 || width == 0};
  }
};

// Calls launch(T(0), grid, block, stream) with T the images' type (float or double), on their
// device's current stream, and checks the launch; nothing for an empty image.
template <typename Launch>
void launch_by_type(const at::Tensor& a, const char* what, const Launch& launch) {
#ifdef DGRD_EMULATE_CUDA
  const cudaStream_t stream = nullptr;
#else
  const c10::cuda::CUDAGuard guard(a.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
#endif
  const SsimGrid shape = SsimGrid::of(a.size(0), int(a.size(1)), int(a.size(2)));
  if (shape.empty) return;
  TORCH_CHECK(a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble,
              "fused SSIM: float32 or float64 images, got ", a.scalar_type());
  const dim3 block(kTile, kTile);
  if (a.scalar_type() == at::kFloat) {
    launch(0.0f, shape.grid, block, stream);
  } else {
    launch(0.0, shape.grid, block, stream);
  }
  const cudaError_t launched = cudaGetLastError();
  TORCH_CHECK(launched == cudaSuccess, "fused SSIM: the CUDA ", what, " failed to launch: ",
              cudaGetErrorString(launched));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> ssim_forward_cuda(const at::Tensor& a, const at::Tensor& b,
                                                     double c1, double c2, int64_t partials) {
  const SsimTensors out = SsimTensors::forward(a, b, partials);
  launch_by_type(a, "forward", [&](auto zero, dim3 grid, dim3 block, cudaStream_t stream) {
    using T = decltype(zero);
    DGRD_LAUNCH(ssim_forward_kernel<T>, grid, block, stream)(
        SsimTensors::images<T>(a, b, c1, c2), out.forward_out<T>());
  });
  return {out.first, out.second};
}

std::tuple<at::Tensor, at::Tensor> ssim_backward_cuda(const at::Tensor& a, const at::Tensor& b,
                                                      const at::Tensor& grad_map,
                                                      const at::Tensor& partials, bool need_a,
                                                      bool need_b) {
  const SsimTensors out = SsimTensors::backward(a, b, grad_map, partials, need_a, need_b);
  if (!(need_a || need_b)) return {out.first, out.second};
  launch_by_type(a, "backward", [&](auto zero, dim3 grid, dim3 block, cudaStream_t stream) {
    using T = decltype(zero);
    const auto images = SsimTensors::images<T>(a, b, 0.0, 0.0);
    const auto in = out.backward_in<T>(grad_map, partials);
    const auto ssim_backward = partials.size(0) == kSsimPartials
                                   ? ssim_backward_kernel<kSsimPartials, T>
                                   : ssim_backward_kernel<kSsimPartialsOfA, T>;
    DGRD_LAUNCH(ssim_backward, grid, block, stream)(images, in);
  });
  return {out.first, out.second};
}

}  // namespace dgrd
