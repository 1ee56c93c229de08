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

// The butterfly of warp_scatter_add: every value summed over the warp, each lane left holding
// the totals of a few of them (one for N <= 32). At each step lane bit kBit picks which half of
// its values a lane keeps, adding its partner's copy of that half: 10 values take 12 shuffles
// instead of 50, and the totals end spread over the lanes, which issue their atomics together.
// scatter_slots says which totals a lane holds; both are called with kBit = 16.
template <int N, int kBit>
__host__ __device__ constexpr int scatter_held() {
  if constexpr (N == 1 || kBit == 0)
    return N;
  else
    return scatter_held<(N + 1) / 2, kBit / 2>();
}

// The totals a lane adds when the butterfly ends: those of values first .. first + count - 1
// (count 0 for a lane that only helped, or whose values are padding: from `size` on). A
// function of the lane alone, so a kernel takes it once, before its loops, instead of working
// the lane's value index and address out again at every splat.
struct ScatterSlots {
  int first;
  int count;
};

template <int N, int kBit = 16>
__device__ __forceinline__ ScatterSlots scatter_slots(int size, int first = 0) {
  const int lane = int(threadIdx.x) & 31;
  if constexpr (N == 1 || kBit == 0) {
    // The lanes that differ only in the bits below kBit * 2 hold the same totals: one adds them.
    constexpr int kSameBits = kBit == 0 ? 0 : 2 * kBit - 1;
    return {first, (lane & kSameBits) == 0 ? min(size, N) : 0};
  } else {
    constexpr int kKeep = (N + 1) / 2;
    const bool upper = (lane & kBit) != 0;
    return scatter_slots<kKeep, kBit / 2>(upper ? max(0, size - kKeep) : min(size, kKeep),
                                          upper ? first + kKeep : first);
  }
}

template <int N, int kBit = 16>
__device__ __forceinline__ void warp_scatter_sums(const float (&v)[N],
                                                  float (&held)[scatter_held<N, kBit>()]) {
  if constexpr (N == 1 || kBit == 0) {
#pragma unroll
    for (int k = 0; k < N; ++k) held[k] = v[k];
#pragma unroll
    for (int bit = kBit; bit > 0; bit /= 2)
#pragma unroll
      for (int k = 0; k < N; ++k) held[k] += __shfl_xor_sync(kFullWarp, held[k], bit);
  } else {
    constexpr int kKeep = (N + 1) / 2;
    const bool upper = (int(threadIdx.x) & kBit) != 0;
    float kept[kKeep];
#pragma unroll
    for (int k = 0; k < kKeep; ++k) {
      const float low = v[k], high = kKeep + k < N ? v[kKeep + k] : 0.f;
      kept[k] = (upper ? high : low) + __shfl_xor_sync(kFullWarp, upper ? low : high, kBit);
    }
    warp_scatter_sums<kKeep, kBit / 2>(kept, held);
  }
}

// The lane's slot where the butterfly leaves each lane at most one total (N <= 32): the index
// of the value whose total it adds, or -1.
template <int N>
__device__ __forceinline__ int scatter_slot(int size) {
  static_assert(scatter_held<N, 16>() == 1, "more than one total a lane");
  const ScatterSlots slots = scatter_slots<N>(size);
  return slots.count > 0 ? slots.first : -1;
}

// The total of value scatter_slot<N>(size) of the lane, summed over the warp (N <= 32).
template <int N>
__device__ __forceinline__ float warp_scatter_total(const float (&v)[N]) {
  float held[1];
  warp_scatter_sums<N, 16>(v, held);
  return held[0];
}

// Sums each of the N values over the warp and adds total k to *address_of(k), for k < size
// (values from `size` on are padding), by the butterfly above: one atomic per value.
template <int N, typename Address>
__device__ __forceinline__ void warp_scatter_add(const float (&v)[N], int size,
                                                 Address address_of) {
  constexpr int kHeld = scatter_held<N, 16>();
  float held[kHeld];
  warp_scatter_sums<N, 16>(v, held);
  const ScatterSlots slots = scatter_slots<N>(size);
#pragma unroll
  for (int k = 0; k < kHeld; ++k)
    if (k < slots.count) atomicAdd(address_of(slots.first + k), held[k]);
}

// Sums each of the N values over the warp and adds total k to *address_of(k): by
// warp_scatter_add with kScatter (CudaTuning::scatter_reduce), else by a shuffle tree per value,
// lane 0 adding all N.
template <bool kScatter, int N, typename Address>
__device__ __forceinline__ void warp_add_each(const float (&v)[N], Address address_of) {
  if constexpr (kScatter) {
    warp_scatter_add(v, N, address_of);
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
