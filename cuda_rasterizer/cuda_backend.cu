// CUDA kernels of the backend: preprocess, key duplication, sort, tile ranges, render forward and
// backward, preprocess backward. All math comes from the shared headers.
#include "cuda_backend.h"

#ifndef DGRD_EMULATE_CUDA
#include <cub/cub.cuh>
#endif

#include "blend.h"
#include "cuda_emulation.h"
#include "preprocess.h"

namespace dgrd {
namespace gpu {

namespace {

constexpr int kThreads = 256;  // for one-thread-per-item kernels
constexpr unsigned kFullWarp = 0xffffffffu;

int blocks_for(int64_t n) { return int((n + kThreads - 1) / kThreads); }

__global__ void preprocess_kernel(Camera<float> cam, GaussianInputs<float> in,
                                  GaussianState<float> state) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < in.count) state.store(i, preprocess_gaussian(cam, in, i));
}

__global__ void duplicate_keys_kernel(Camera<float> cam, int count, GaussianState<float> state,
                                      const int64_t* offsets, uint64_t* keys, int* ids) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= count || state.radii[i] == 0) return;
  int64_t out = i == 0 ? 0 : offsets[i - 1];
  const TileRect r = state.rects[i];
  // View depth is > 0.2, so its float bits order like the depths themselves.
  const uint64_t depth_bits = __float_as_uint(state.features[i].w);
  for (int y = r.y0; y < r.y1; ++y)
    for (int x = r.x0; x < r.x1; ++x) {
      keys[out] = (uint64_t(y * cam.tiles_x + x) << 32) | depth_bits;
      ids[out] = i;
      ++out;
    }
}

__global__ void tile_ranges_kernel(const uint64_t* keys, int pairs, int* ranges) {
  // 64-bit: with pairs near 2^31 the last block's indices pass INT_MAX.
  const int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= pairs) return;
  const int tile = int(keys[k] >> 32);
  if (k == 0) {
    ranges[2 * tile] = 0;
  } else {
    const int prev = int(keys[k - 1] >> 32);
    if (tile != prev) {
      ranges[2 * prev + 1] = int(k);
      ranges[2 * tile] = int(k);
    }
  }
  if (k == pairs - 1) ranges[2 * tile + 1] = pairs;
}

// The pixel a thread of a tile block owns.
struct TileThread {
  int tile, x, y;
  bool inside;
  __device__ TileThread(const Camera<float>& cam) {
    tile = blockIdx.x;
    x = (tile % cam.tiles_x) * kTileSize + int(threadIdx.x) % kTileSize;
    y = (tile / cam.tiles_x) * kTileSize + int(threadIdx.x) / kTileSize;
    inside = x < cam.width && y < cam.height;
  }
};

// Splats staged in shared memory, kTilePixels at a time.
struct SplatBatch {
  int id[kTilePixels];
  Vec2<float> mean2d[kTilePixels];
  Vec4<float> conic_opacity[kTilePixels];
  Vec4<float> feature[kTilePixels];

  __device__ void load(int slot, int id_, const GaussianState<float>& s) {
    id[slot] = id_;
    mean2d[slot] = s.means2d[id_];
    conic_opacity[slot] = s.conic_opacity[id_];
    feature[slot] = s.features[id_];
  }
};

__global__ void __launch_bounds__(kTilePixels)
    render_kernel(Camera<float> cam, GaussianState<float> state, TileLists lists,
                  PixelBuffers<float> px) {
  DGRD_SHARED(SplatBatch, batch);
  const TileThread me(cam);
  const int begin = lists.tile_ranges[2 * me.tile], end = lists.tile_ranges[2 * me.tile + 1];
  bool done = !me.inside;
  PixelAccum<float> acc;
  acc.reset();
  int visited = 0, n_contrib = 0;
  for (int start = begin; start < end; start += kTilePixels) {
    // The whole block stops once every pixel is saturated.
    if (__syncthreads_count(done) == kTilePixels) break;
    const int k = start + int(threadIdx.x);
    if (k < end) batch.load(threadIdx.x, lists.point_list[k], state);
    __syncthreads();
    const int n = min(kTilePixels, end - start);
    for (int j = 0; !done && j < n; ++j) {
      ++visited;
      float alpha, G;
      Vec2<float> d;
      if (!splat_alpha(batch.mean2d[j], batch.conic_opacity[j], float(me.x), float(me.y), alpha,
                       G, d))
        continue;
      if (!acc.blend(alpha, batch.feature[j])) {
        done = true;
        break;
      }
      n_contrib = visited;
    }
  }
  if (me.inside)
    acc.store(px, me.y * cam.width + me.x, cam.width * cam.height, cam.background, n_contrib);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(kFullWarp, v, offset);
  return v;
}

// Sums a SplatGrad over the warp and lets lane 0 add it: one set of atomics per warp instead of
// one per pixel.
__device__ __forceinline__ void warp_accumulate(const SplatGrad<float>& g, SplatGrad<float>* out) {
  float v[kSplatGradValues] = {g.mean2d.x, g.mean2d.y, g.conic.a, g.conic.b, g.conic.c,
                               g.opacity, g.feature.x, g.feature.y, g.feature.z, g.feature.w};
#pragma unroll
  for (int k = 0; k < kSplatGradValues; ++k) v[k] = warp_sum(v[k]);
  if ((threadIdx.x & 31) == 0) {
    atomicAdd(&out->mean2d.x, v[0]);
    atomicAdd(&out->mean2d.y, v[1]);
    atomicAdd(&out->conic.a, v[2]);
    atomicAdd(&out->conic.b, v[3]);
    atomicAdd(&out->conic.c, v[4]);
    atomicAdd(&out->opacity, v[5]);
    atomicAdd(&out->feature.x, v[6]);
    atomicAdd(&out->feature.y, v[7]);
    atomicAdd(&out->feature.z, v[8]);
    atomicAdd(&out->feature.w, v[9]);
  }
}

__global__ void __launch_bounds__(kTilePixels)
    render_backward_kernel(Camera<float> cam, GaussianState<float> state, TileLists lists,
                           PixelBuffers<float> px, PixelGrads<float> grads,
                           SplatGrad<float>* splat_grads) {
  DGRD_SHARED(SplatBatch, batch);
  DGRD_SHARED(int, block_last);
  const TileThread me(cam);
  const int begin = lists.tile_ranges[2 * me.tile];
  const int plane = cam.width * cam.height;
  const int p = me.y * cam.width + me.x;
  const int last = me.inside ? px.n_contrib[p] : 0;

  PixelBackward<float> pb;
  if (me.inside) pb.init(px, grads, p, plane, cam.background);
  // Splats behind every pixel's last contributor are never visited.
  if (threadIdx.x == 0) block_last = 0;
  __syncthreads();
  atomicMax(&block_last, last);
  __syncthreads();
  const int block_end = block_last;

  // Positions are relative to `begin`; batches walk from the back.
  for (int stop = block_end; stop > 0; stop -= kTilePixels) {
    const int start = max(0, stop - kTilePixels);
    __syncthreads();  // the previous batch is no longer read
    const int k = stop - 1 - int(threadIdx.x);
    if (k >= start) batch.load(threadIdx.x, lists.point_list[begin + k], state);
    __syncthreads();
    const int n = stop - start;
    for (int j = 0; j < n; ++j) {
      const int pos = stop - 1 - j;
      SplatGrad<float> g = {};
      bool contributes = false;
      if (pos < last) {
        float alpha, G;
        Vec2<float> d;
        if (splat_alpha(batch.mean2d[j], batch.conic_opacity[j], float(me.x), float(me.y), alpha,
                        G, d)) {
          pb.step(alpha, G, d, batch.conic_opacity[j], batch.feature[j], g);
          contributes = true;
        }
      }
      if (__any_sync(kFullWarp, contributes)) warp_accumulate(g, splat_grads + batch.id[j]);
    }
  }
}

__global__ void preprocess_backward_kernel(Camera<float> cam, GaussianInputs<float> in,
                                           const int* radii, const SplatGrad<float>* splat_grads,
                                           GaussianGrads<float> out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < in.count && radii[i] > 0) preprocess_gaussian_backward(cam, in, i, splat_grads[i], out);
}

__global__ void mark_visible_kernel(const float* viewmatrix, const float* positions, int count,
                                    bool* visible) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < count) visible[i] = in_front_of_camera(viewmatrix, load3(positions, i));
}

}  // namespace

void preprocess(const Camera<float>& cam, const GaussianInputs<float>& in,
                const GaussianState<float>& state, cudaStream_t stream) {
  if (in.count == 0) return;
  DGRD_LAUNCH(preprocess_kernel, blocks_for(in.count), kThreads, stream)(cam, in, state);
}

void inclusive_scan(void* temp, size_t& temp_bytes, const int64_t* tiles_touched,
                    int64_t* offsets, int count, cudaStream_t stream) {
  cub::DeviceScan::InclusiveSum(temp, temp_bytes, tiles_touched, offsets, count, stream);
}

void duplicate_keys(const Camera<float>& cam, int count, const GaussianState<float>& state,
                    const int64_t* offsets, uint64_t* keys, int* ids, cudaStream_t stream) {
  if (count == 0) return;
  DGRD_LAUNCH(duplicate_keys_kernel, blocks_for(count), kThreads, stream)(cam, count, state,
                                                                        offsets, keys, ids);
}

int sort_end_bit(int tiles) {
  int bits = 0;
  while (bits < 31 && (1 << bits) < tiles) ++bits;
  return 32 + bits;
}

void sort_pairs(void* temp, size_t& temp_bytes, const uint64_t* keys_in, uint64_t* keys_out,
                const int* ids_in, int* ids_out, int pairs, int end_bit, cudaStream_t stream) {
  cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, ids_in, ids_out, pairs, 0,
                                  end_bit, stream);
}

void identify_tile_ranges(const uint64_t* sorted_keys, int pairs, int* tile_ranges,
                          cudaStream_t stream) {
  if (pairs == 0) return;
  DGRD_LAUNCH(tile_ranges_kernel, blocks_for(pairs), kThreads, stream)(sorted_keys, pairs,
                                                                     tile_ranges);
}

void render(const Camera<float>& cam, const GaussianState<float>& state, TileLists lists,
            const PixelBuffers<float>& px, cudaStream_t stream) {
  DGRD_LAUNCH(render_kernel, cam.tiles_x * cam.tiles_y, kTilePixels, stream)(cam, state, lists, px);
}

void render_backward(const Camera<float>& cam, const GaussianState<float>& state, TileLists lists,
                     const PixelBuffers<float>& px, PixelGrads<float> grads,
                     SplatGrad<float>* splat_grads, cudaStream_t stream) {
  DGRD_LAUNCH(render_backward_kernel, cam.tiles_x * cam.tiles_y, kTilePixels, stream)(
      cam, state, lists, px, grads, splat_grads);
}

void preprocess_backward(const Camera<float>& cam, const GaussianInputs<float>& in,
                         const int* radii, const SplatGrad<float>* splat_grads,
                         const GaussianGrads<float>& out, cudaStream_t stream) {
  if (in.count == 0) return;
  DGRD_LAUNCH(preprocess_backward_kernel, blocks_for(in.count), kThreads, stream)(
      cam, in, radii, splat_grads, out);
}

void mark_visible(const float* viewmatrix, const float* positions, int count, bool* visible,
                  cudaStream_t stream) {
  if (count == 0) return;
  DGRD_LAUNCH(mark_visible_kernel, blocks_for(count), kThreads, stream)(viewmatrix, positions,
                                                                      count, visible);
}

}  // namespace gpu
}  // namespace dgrd
