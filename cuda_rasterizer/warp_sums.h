// Warp-wide sums and maxima of the CUDA kernels (all 32 lanes take part in each call).
#pragma once

#include "cuda_emulation.h"

namespace dgrd {
namespace gpu {

constexpr unsigned kFullWarp = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(kFullWarp, v, offset);
  return v;
}

__device__ __forceinline__ int warp_max(int v) {
  for (int offset = 16; offset > 0; offset /= 2) v = max(v, __shfl_xor_sync(kFullWarp, v, offset));
  return v;
}

// Sums each of the N values over the warp and adds total k to *address_of(k), for k < size
// (values from `size` on are padding). A butterfly that halves what each lane carries at every
// step, lane bit kBit choosing the half: 10 values take 12 shuffles instead of 50, and the
// totals end spread over the lanes, which issue their atomics together. `first` is the index
// of the lane's first value; called with kBit = 16, first = 0.
template <int N, int kBit, typename Address>
__device__ __forceinline__ void warp_scatter_add(const float (&v)[N], int first, int size,
                                                 Address address_of) {
  const int lane = int(threadIdx.x) & 31;
  if constexpr (N == 1 || kBit == 0) {
    float total[N];
#pragma unroll
    for (int k = 0; k < N; ++k) total[k] = v[k];
#pragma unroll
    for (int bit = kBit; bit > 0; bit /= 2)
#pragma unroll
      for (int k = 0; k < N; ++k) total[k] += __shfl_xor_sync(kFullWarp, total[k], bit);
    // The lanes that differ only in the bits below kBit * 2 hold the same totals: one adds them.
    constexpr int kSameBits = kBit == 0 ? 0 : 2 * kBit - 1;
    if ((lane & kSameBits) == 0) {
#pragma unroll
      for (int k = 0; k < N; ++k)
        if (k < size) atomicAdd(address_of(first + k), total[k]);
    }
  } else {
    constexpr int kKeep = (N + 1) / 2;
    const bool upper = (lane & kBit) != 0;
    float kept[kKeep];
#pragma unroll
    for (int k = 0; k < kKeep; ++k) {
      const float low = v[k], high = kKeep + k < N ? v[kKeep + k] : 0.f;
      kept[k] = (upper ? high : low) + __shfl_xor_sync(kFullWarp, upper ? low : high, kBit);
    }
    warp_scatter_add<kKeep, kBit / 2>(kept, upper ? first + kKeep : first,
                                      upper ? max(0, size - kKeep) : min(size, kKeep),
                                      address_of);
  }
}

// Sums each of the N values over the warp and adds total k to *address_of(k): by
// warp_scatter_add with kScatter (CudaTuning::scatter_reduce), else by a shuffle tree per value,
// lane 0 adding all N.
template <bool kScatter, int N, typename Address>
__device__ __forceinline__ void warp_add_each(const float (&v)[N], Address address_of) {
  if constexpr (kScatter) {
    warp_scatter_add<N, 16>(v, 0, N, address_of);
  } else {
    float total[N];
#pragma unroll
    for (int k = 0; k < N; ++k) total[k] = warp_sum(v[k]);
    if ((threadIdx.x & 31) == 0) {
#pragma unroll
      for (int k = 0; k < N; ++k) atomicAdd(address_of(k), total[k]);
    }
  }
}

}  // namespace gpu
}  // namespace dgrd
