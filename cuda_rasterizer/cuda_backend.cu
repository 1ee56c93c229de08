// CUDA kernels of the backend: preprocess, key duplication, sort, tile ranges, render forward and
// backward, preprocess backward. All math comes from the shared headers.
#include "cuda_backend.h"

#include <cub/cub.cuh>

#include "blend.h"
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

// kMedian: also the median depth (issue 12); the plain instantiation is the plain render.
template <bool kMedian>
__global__ void __launch_bounds__(kTilePixels)
    render_kernel(Camera<float> cam, GaussianState<float> state, TileLists lists,
                  PixelBuffers<float> px, OptionalOutputs<float> extra) {
  __shared__ SplatBatch batch;
  const TileThread me(cam);
  const int begin = lists.tile_ranges[2 * me.tile], end = lists.tile_ranges[2 * me.tile + 1];
  bool done = !me.inside;
  PixelAccum<float> acc;
  acc.reset();
  MedianDepth<float> median;
  if (kMedian) median.reset();
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
      const float before = acc.transmittance;
      if (!acc.blend(alpha, batch.feature[j])) {
        done = true;
        break;
      }
      n_contrib = visited;
      if (kMedian) median.update(before, acc.transmittance, batch.feature[j].w, n_contrib);
    }
  }
  if (me.inside) {
    const int p = me.y * cam.width + me.x;
    acc.store(px, p, cam.width * cam.height, cam.background, n_contrib);
    if (kMedian) {
      extra.median[p] = median.depth;
      extra.median_contrib[p] = median.position;
    }
  }
}

// The largest n_contrib of the block's pixels (`last`: the thread's own, 0 outside the image):
// no splat behind it is visited.
__device__ __forceinline__ int block_max(int last) {
  __shared__ int block_last;
  if (threadIdx.x == 0) block_last = 0;
  __syncthreads();
  atomicMax(&block_last, last);
  __syncthreads();
  const int result = block_last;
  __syncthreads();  // before anyone may reset block_last again
  return result;
}

// Splats and a chunk of kChunk of their feature channels, staged in shared memory. Rows are
// padded by one so that each thread's staging writes fall in distinct banks; reads of one
// splat's row by the whole block are broadcasts. Channels past the count are staged as 0.
template <int kChunk>
struct FeatureBatch {
  int id[kTilePixels];
  Vec2<float> mean2d[kTilePixels];
  Vec4<float> conic_opacity[kTilePixels];
  float feature[kTilePixels][kChunk + 1];

  __device__ void load(int slot, int id_, const GaussianState<float>& s, const float* features,
                       int channels, int first, int count) {
    id[slot] = id_;
    mean2d[slot] = s.means2d[id_];
    conic_opacity[slot] = s.conic_opacity[id_];
    const float* row = features + int64_t(id_) * channels + first;
#pragma unroll
    for (int c = 0; c < kChunk; ++c) feature[slot][c] = c < count ? row[c] : 0.f;
  }
};

// A thread of a feature kernel: its pixel, the block's chunk of channels [first, first + count)
// (blockIdx.y picks the chunk), and how far the pixel's and the block's walks go.
template <int kChunk>
struct FeatureThread : TileThread {
  int first, count, begin, p, last, block_end;
  int64_t plane;

  __device__ FeatureThread(const Camera<float>& cam, TileLists lists, const PixelBuffers<float>& px,
                           int channels)
      : TileThread(cam) {
    first = int(blockIdx.y) * kChunk;
    count = min(kChunk, channels - first);
    begin = lists.tile_ranges[2 * tile];
    plane = int64_t(cam.width) * cam.height;
    p = y * cam.width + x;
    last = inside ? px.n_contrib[p] : 0;
    block_end = block_max(last);
  }
};

// The feature map, kChunk channels per block (blockIdx.y picks the chunk): the block walks its
// tile's list again up to each pixel's last blended splat (n_contrib of the render), so the
// weights, and which splats are blended, are the render's; registers hold one chunk of sums.
template <int kChunk>
__global__ void __launch_bounds__(kTilePixels)
    render_features_kernel(Camera<float> cam, GaussianState<float> state, TileLists lists,
                           PixelBuffers<float> px, OptionalOutputs<float> extra) {
  __shared__ FeatureBatch<kChunk> batch;
  const FeatureThread<kChunk> me(cam, lists, px, extra.channels);
  float sum[kChunk];
#pragma unroll
  for (int c = 0; c < kChunk; ++c) sum[c] = 0.f;
  float transmittance = 1.f;
  for (int start = 0; start < me.block_end; start += kTilePixels) {
    __syncthreads();  // the previous batch is no longer read
    const int k = start + int(threadIdx.x);
    if (k < me.block_end)
      batch.load(threadIdx.x, lists.point_list[me.begin + k], state, extra.features,
                 extra.channels, me.first, me.count);
    __syncthreads();
    const int n = min(kTilePixels, me.last - start);
    for (int j = 0; j < n; ++j) {
      float alpha, G;
      Vec2<float> d;
      if (!splat_alpha(batch.mean2d[j], batch.conic_opacity[j], float(me.x), float(me.y), alpha,
                       G, d))
        continue;
      blend_features(sum, batch.feature[j], kChunk, alpha * transmittance);
      transmittance = transmittance * (1.f - alpha);
    }
  }
  if (me.inside)
    for (int c = 0; c < me.count; ++c)
      extra.feature_map[(me.first + c) * me.plane + me.p] = sum[c];
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

// Lane 0 adds the warp's sum of v to *out.
__device__ __forceinline__ void warp_add(float v, float* out) {
  v = warp_sum(v);
  if ((threadIdx.x & 31) == 0) atomicAdd(out, v);
}

// kMedian: the median's upstream gradient goes to its splat's depth.
template <bool kMedian>
__global__ void __launch_bounds__(kTilePixels)
    render_backward_kernel(Camera<float> cam, GaussianState<float> state, TileLists lists,
                           PixelBuffers<float> px, PixelGrads<float> grads,
                           OptionalGrads<float> extra, SplatGrad<float>* splat_grads) {
  __shared__ SplatBatch batch;
  __shared__ int block_last;
  const TileThread me(cam);
  const int begin = lists.tile_ranges[2 * me.tile];
  const int plane = cam.width * cam.height;
  const int p = me.y * cam.width + me.x;
  const int last = me.inside ? px.n_contrib[p] : 0;
  const int median_position = kMedian && me.inside ? extra.median_contrib[p] : 0;
  const float median_grad = kMedian && me.inside ? extra.median[p] : 0.f;

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
      if (kMedian && pos + 1 == median_position) {
        g.feature.w += median_grad;
        contributes = true;
      }
      if (__any_sync(kFullWarp, contributes)) warp_accumulate(g, splat_grads + batch.id[j]);
    }
  }
}

// The feature map's part of the backward, kChunk channels per block as in the forward: each
// chunk adds its part of dL/dalpha (FeatureBackward), carried to mean2d, conic and opacity,
// and the chunk's dL/dF = w g.
template <int kChunk>
__global__ void __launch_bounds__(kTilePixels)
    render_features_backward_kernel(Camera<float> cam, GaussianState<float> state,
                                    TileLists lists, PixelBuffers<float> px,
                                    OptionalGrads<float> extra, SplatGrad<float>* splat_grads) {
  __shared__ FeatureBatch<kChunk> batch;
  const FeatureThread<kChunk> me(cam, lists, px, extra.channels);
  float upstream[kChunk];
#pragma unroll
  for (int c = 0; c < kChunk; ++c)
    upstream[c] = me.inside && c < me.count
                      ? extra.feature_map[(me.first + c) * me.plane + me.p] : 0.f;
  float transmittance =
      me.inside ? px.pixel_state[PixelBuffers<float>::kFinalT * me.plane + me.p] : 1.f;
  FeatureBackward<float> fb;
  fb.reset();

  for (int stop = me.block_end; stop > 0; stop -= kTilePixels) {
    const int start = max(0, stop - kTilePixels);
    __syncthreads();  // the previous batch is no longer read
    const int k = stop - 1 - int(threadIdx.x);
    if (k >= start)
      batch.load(threadIdx.x, lists.point_list[me.begin + k], state, extra.features,
                 extra.channels, me.first, me.count);
    __syncthreads();
    const int n = stop - start;
    for (int j = 0; j < n; ++j) {
      const int pos = stop - 1 - j;
      SplatGrad<float> g = {};
      float w = 0.f;
      bool contributes = false;
      if (pos < me.last) {
        float alpha, G;
        Vec2<float> d;
        if (splat_alpha(batch.mean2d[j], batch.conic_opacity[j], float(me.x), float(me.y), alpha,
                        G, d)) {
          transmittance = transmittance / (1.f - alpha);
          const float dalpha = fb.step(alpha, transmittance, batch.feature[j], upstream, kChunk);
          alpha_grad_to_splat(dalpha, G, d, batch.conic_opacity[j], g);
          w = alpha * transmittance;
          contributes = true;
        }
      }
      if (!__any_sync(kFullWarp, contributes)) continue;
      SplatGrad<float>* out = splat_grads + batch.id[j];
      warp_add(g.mean2d.x, &out->mean2d.x);
      warp_add(g.mean2d.y, &out->mean2d.y);
      warp_add(g.conic.a, &out->conic.a);
      warp_add(g.conic.b, &out->conic.b);
      warp_add(g.conic.c, &out->conic.c);
      warp_add(g.opacity, &out->opacity);
      float* features_grad =
          extra.features_grad + int64_t(batch.id[j]) * extra.channels + me.first;
#pragma unroll
      for (int c = 0; c < kChunk; ++c)
        if (c < me.count) warp_add(w * upstream[c], features_grad + c);
    }
  }
}

__global__ void preprocess_backward_kernel(Camera<float> cam, GaussianInputs<float> in,
                                           const int* radii, const SplatGrad<float>* splat_grads,
                                           GaussianGrads<float> out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < in.count && radii[i] > 0) preprocess_gaussian_backward(cam, in, i, splat_grads[i], out);
}

// The k-th of a CameraGrad's values; with k known at compile time (unrolled loops) the struct
// stays in registers.
__device__ __forceinline__ float camera_value(const CameraGrad<float>& g, int k) {
  return k < 16 ? g.viewmatrix[k] : (k < 32 ? g.projmatrix[k - 16] : g.campos[k - 32]);
}

// As preprocess_backward_kernel, and the block's sum of the Gaussians' camera gradient shares
// into partials[blockIdx.x]: shuffles within each warp, then one thread per value over the
// warps, in a fixed order. Launched with kThreads threads per block.
__global__ void __launch_bounds__(kThreads)
    preprocess_backward_camera_kernel(Camera<float> cam, GaussianInputs<float> in,
                                      const int* radii, const SplatGrad<float>* splat_grads,
                                      GaussianGrads<float> out, CameraGrad<float>* partials) {
  constexpr int kWarps = kThreads / 32;
  __shared__ float warp_sums[kWarps][kCameraGradValues];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  CameraGrad<float> share = {};
  if (i < in.count && radii[i] > 0)
    preprocess_gaussian_backward(cam, in, i, splat_grads[i], out, &share);
  const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) / 32;
#pragma unroll
  for (int k = 0; k < kCameraGradValues; ++k) {
    const float sum = warp_sum(camera_value(share, k));
    if (lane == 0) warp_sums[warp][k] = sum;
  }
  __syncthreads();
  if (threadIdx.x < kCameraGradValues) {
    float total = 0.0f;
    for (int w = 0; w < kWarps; ++w) total += warp_sums[w][threadIdx.x];
    reinterpret_cast<float*>(partials + blockIdx.x)[threadIdx.x] = total;
  }
}

// The second pass: one block per camera value sums the blocks' partials in a fixed order, in
// double, so the camera gradient is the same on every call. Launched with kThreads threads.
__global__ void __launch_bounds__(kThreads)
    camera_grad_total_kernel(const CameraGrad<float>* partials, int blocks,
                             CameraGrad<float>* total) {
  __shared__ double sums[kThreads];
  const int k = blockIdx.x;
  const float* values = reinterpret_cast<const float*>(partials);
  double sum = 0.0;
  for (int b = threadIdx.x; b < blocks; b += blockDim.x)
    sum += values[int64_t(b) * kCameraGradValues + k];
  sums[threadIdx.x] = sum;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (int(threadIdx.x) < half) sums[threadIdx.x] += sums[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) reinterpret_cast<float*>(total)[k] = float(sums[0]);
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
  preprocess_kernel<<<blocks_for(in.count), kThreads, 0, stream>>>(cam, in, state);
}

cudaError_t inclusive_scan(void* temp, size_t& temp_bytes, const int64_t* tiles_touched,
                           int64_t* offsets, int count, cudaStream_t stream) {
  return cub::DeviceScan::InclusiveSum(temp, temp_bytes, tiles_touched, offsets, count, stream);
}

void duplicate_keys(const Camera<float>& cam, int count, const GaussianState<float>& state,
                    const int64_t* offsets, uint64_t* keys, int* ids, cudaStream_t stream) {
  if (count == 0) return;
  duplicate_keys_kernel<<<blocks_for(count), kThreads, 0, stream>>>(cam, count, state, offsets,
                                                                    keys, ids);
}

int sort_end_bit(int tiles) {
  int bits = 0;
  while (bits < 31 && (1 << bits) < tiles) ++bits;
  return 32 + bits;
}

cudaError_t sort_pairs(void* temp, size_t& temp_bytes, const uint64_t* keys_in,
                       uint64_t* keys_out, const int* ids_in, int* ids_out, int pairs,
                       int end_bit, cudaStream_t stream) {
  return cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, ids_in, ids_out,
                                         pairs, 0, end_bit, stream);
}

void identify_tile_ranges(const uint64_t* sorted_keys, int pairs, int* tile_ranges,
                          cudaStream_t stream) {
  if (pairs == 0) return;
  tile_ranges_kernel<<<blocks_for(pairs), kThreads, 0, stream>>>(sorted_keys, pairs, tile_ranges);
}

// Channels per block of the feature kernels: small counts get small chunks (fewer registers
// and less shared memory), larger ones 16 per block, blocks over chunks running in parallel.
int feature_chunk(int channels) { return channels <= 4 ? 4 : channels <= 8 ? 8 : 16; }

template <int kChunk>
void launch_features(const Camera<float>& cam, const GaussianState<float>& state, TileLists lists,
                     const PixelBuffers<float>& px, const OptionalOutputs<float>& extra,
                     cudaStream_t stream) {
  const dim3 grid(cam.tiles_x * cam.tiles_y, (extra.channels + kChunk - 1) / kChunk);
  render_features_kernel<kChunk><<<grid, kTilePixels, 0, stream>>>(cam, state, lists, px, extra);
}

template <int kChunk>
void launch_features_backward(const Camera<float>& cam, const GaussianState<float>& state,
                              TileLists lists, const PixelBuffers<float>& px,
                              const OptionalGrads<float>& extra, SplatGrad<float>* splat_grads,
                              cudaStream_t stream) {
  const dim3 grid(cam.tiles_x * cam.tiles_y, (extra.channels + kChunk - 1) / kChunk);
  render_features_backward_kernel<kChunk><<<grid, kTilePixels, 0, stream>>>(
      cam, state, lists, px, extra, splat_grads);
}

void render(const Camera<float>& cam, const GaussianState<float>& state, TileLists lists,
            const PixelBuffers<float>& px, const OptionalOutputs<float>& extra,
            cudaStream_t stream) {
  const int tiles = cam.tiles_x * cam.tiles_y;
  if (extra.has_median())
    render_kernel<true><<<tiles, kTilePixels, 0, stream>>>(cam, state, lists, px, extra);
  else
    render_kernel<false><<<tiles, kTilePixels, 0, stream>>>(cam, state, lists, px, extra);
  if (!extra.has_features()) return;
  switch (feature_chunk(extra.channels)) {
    case 4: launch_features<4>(cam, state, lists, px, extra, stream); break;
    case 8: launch_features<8>(cam, state, lists, px, extra, stream); break;
    default: launch_features<16>(cam, state, lists, px, extra, stream); break;
  }
}

void render_backward(const Camera<float>& cam, const GaussianState<float>& state, TileLists lists,
                     const PixelBuffers<float>& px, PixelGrads<float> grads,
                     const OptionalGrads<float>& extra, SplatGrad<float>* splat_grads,
                     cudaStream_t stream) {
  const int tiles = cam.tiles_x * cam.tiles_y;
  if (extra.has_median())
    render_backward_kernel<true><<<tiles, kTilePixels, 0, stream>>>(cam, state, lists, px, grads,
                                                                    extra, splat_grads);
  else
    render_backward_kernel<false><<<tiles, kTilePixels, 0, stream>>>(cam, state, lists, px, grads,
                                                                     extra, splat_grads);
  if (!extra.has_features()) return;
  switch (feature_chunk(extra.channels)) {
    case 4: launch_features_backward<4>(cam, state, lists, px, extra, splat_grads, stream); break;
    case 8: launch_features_backward<8>(cam, state, lists, px, extra, splat_grads, stream); break;
    default:
      launch_features_backward<16>(cam, state, lists, px, extra, splat_grads, stream);
      break;
  }
}

int camera_grad_partials(int count) { return blocks_for(count); }

void preprocess_backward(const Camera<float>& cam, const GaussianInputs<float>& in,
                         const int* radii, const SplatGrad<float>* splat_grads,
                         const GaussianGrads<float>& out, CameraGrad<float>* camera,
                         CameraGrad<float>* partials, cudaStream_t stream) {
  if (in.count == 0) return;
  const int blocks = blocks_for(in.count);
  if (!camera) {
    preprocess_backward_kernel<<<blocks, kThreads, 0, stream>>>(cam, in, radii, splat_grads, out);
    return;
  }
  preprocess_backward_camera_kernel<<<blocks, kThreads, 0, stream>>>(cam, in, radii, splat_grads,
                                                                     out, partials);
  camera_grad_total_kernel<<<kCameraGradValues, kThreads, 0, stream>>>(partials, blocks, camera);
}

void mark_visible(const float* viewmatrix, const float* positions, int count, bool* visible,
                  cudaStream_t stream) {
  if (count == 0) return;
  mark_visible_kernel<<<blocks_for(count), kThreads, 0, stream>>>(viewmatrix, positions, count,
                                                                  visible);
}

}  // namespace gpu
}  // namespace dgrd
