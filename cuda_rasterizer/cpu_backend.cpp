// The CPU backend: loops over Gaussians, tiles and pixels calling the shared math headers.
#include "cpu_backend.h"

#include <algorithm>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "blend.h"
#include "preprocess.h"

namespace dgrd {
namespace cpu {

namespace {

int thread_count() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Pixel rectangle of tile `tile`, clipped to the image.
struct TilePixels {
  int x0, y0, x1, y1;
};

template <typename T>
TilePixels tile_pixels(const Camera<T>& cam, int tile) {
  const int tx = tile % cam.tiles_x, ty = tile / cam.tiles_x;
  return {tx * kTileSize, ty * kTileSize, std::min(cam.width, (tx + 1) * kTileSize),
          std::min(cam.height, (ty + 1) * kTileSize)};
}

template <typename A, typename T>
void add(SplatGrad<A>& acc, const SplatGrad<T>& g) {
  acc.mean2d.x += g.mean2d.x;
  acc.mean2d.y += g.mean2d.y;
  acc.conic.a += g.conic.a;
  acc.conic.b += g.conic.b;
  acc.conic.c += g.conic.c;
  acc.opacity += g.opacity;
  acc.feature.x += g.feature.x;
  acc.feature.y += g.feature.y;
  acc.feature.z += g.feature.z;
  acc.feature.w += g.feature.w;
}

// Loops smaller than this run on one thread: waking the pool costs more than they do.
constexpr int kMinParallelItems = 4096;

}  // namespace

template <typename T>
void preprocess(const Camera<T>& cam, const GaussianInputs<T>& in, const GaussianState<T>& state) {
#pragma omp parallel for schedule(static) if (in.count >= kMinParallelItems)
  for (int i = 0; i < in.count; ++i) state.store(i, preprocess_gaussian(cam, in, i));
}

template <typename T>
void bin_gaussians(const Camera<T>& cam, int count, const GaussianState<T>& state, int* point_list,
                   int* tile_ranges) {
  const int tiles = cam.tiles_x * cam.tiles_y;
  std::vector<int64_t> cursor(tiles + 1, 0);
  for (int i = 0; i < count; ++i) {
    if (state.radii[i] == 0) continue;
    const TileRect r = state.rects[i];
    for (int y = r.y0; y < r.y1; ++y)
      for (int x = r.x0; x < r.x1; ++x) ++cursor[y * cam.tiles_x + x + 1];
  }
  for (int t = 0; t < tiles; ++t) {
    cursor[t + 1] += cursor[t];
    tile_ranges[2 * t] = int(cursor[t]);
    tile_ranges[2 * t + 1] = int(cursor[t + 1]);
  }
  // Appending in index order makes a stable sort by depth break ties by index.
  for (int i = 0; i < count; ++i) {
    if (state.radii[i] == 0) continue;
    const TileRect r = state.rects[i];
    for (int y = r.y0; y < r.y1; ++y)
      for (int x = r.x0; x < r.x1; ++x) point_list[cursor[y * cam.tiles_x + x]++] = i;
  }
  const Vec4<T>* features = state.features;
#pragma omp parallel for schedule(dynamic, 4) if (cursor[tiles] >= kMinParallelItems)
  for (int t = 0; t < tiles; ++t) {
    std::stable_sort(point_list + tile_ranges[2 * t], point_list + tile_ranges[2 * t + 1],
                     [features](int a, int b) { return features[a].w < features[b].w; });
  }
}

namespace {

// The render, specialized at compile time on the optional outputs so that the plain call runs
// the same code as without them.
template <bool kFeatures, bool kMedian, typename T>
void render_pixels(const Camera<T>& cam, const GaussianState<T>& state, TileLists lists,
                   const PixelBuffers<T>& px, const OptionalOutputs<T>& extra) {
  const int tiles = cam.tiles_x * cam.tiles_y;
  const int plane = cam.width * cam.height;
  const int channels = extra.channels;
#pragma omp parallel for schedule(dynamic, 1) if (plane >= kMinParallelItems)
  for (int tile = 0; tile < tiles; ++tile) {
    const TilePixels tp = tile_pixels(cam, tile);
    const int begin = lists.tile_ranges[2 * tile], end = lists.tile_ranges[2 * tile + 1];
    std::vector<T> feature_sum(kFeatures ? channels : 0);
    for (int y = tp.y0; y < tp.y1; ++y) {
      for (int x = tp.x0; x < tp.x1; ++x) {
        PixelAccum<T> acc;
        acc.reset();
        MedianDepth<T> median;
        if (kMedian) median.reset();
        if (kFeatures) std::fill(feature_sum.begin(), feature_sum.end(), T(0));
        int n_contrib = 0;
        for (int k = begin; k < end; ++k) {
          const int id = lists.point_list[k];
          T alpha, G;
          Vec2<T> d;
          if (!splat_alpha(state.means2d[id], state.conic_opacity[id], T(x), T(y), alpha, G, d))
            continue;
          const T before = acc.transmittance;
          if (!acc.blend(alpha, state.features[id])) break;
          n_contrib = k - begin + 1;
          if (kFeatures)
            blend_features(feature_sum.data(), extra.features + size_t(id) * channels, channels,
                           alpha * before);
          if (kMedian) median.update(before, acc.transmittance, state.features[id].w, n_contrib);
        }
        const int p = y * cam.width + x;
        acc.store(px, p, plane, cam.background, n_contrib);
        if (kFeatures)
          for (int c = 0; c < channels; ++c) extra.feature_map[size_t(c) * plane + p] = feature_sum[c];
        if (kMedian) {
          extra.median[p] = median.depth;
          extra.median_contrib[p] = median.position;
        }
      }
    }
  }
}

template <bool kFeatures, bool kMedian, typename T>
void render_pixels_backward(const Camera<T>& cam, const GaussianState<T>& state, TileLists lists,
                            const PixelBuffers<T>& px, PixelGrads<T> grads,
                            const OptionalGrads<T>& extra, int count,
                            SplatGrad<T>* splat_grads) {
  const int tiles = cam.tiles_x * cam.tiles_y;
  const int plane = cam.width * cam.height;
  const bool parallel = plane >= kMinParallelItems;
  const int threads = parallel ? thread_count() : 1;
  const int channels = kFeatures ? extra.channels : 0;
  // Per-thread accumulators in double: a Gaussian's gradient sums thousands of pixel terms, and
  // float32 running sums would lose digits the CUDA backend's tests compare against.
  std::vector<SplatGrad<double>> sums(size_t(threads) * count);
  std::memset(static_cast<void*>(sums.data()), 0, sums.size() * sizeof(SplatGrad<double>));
  std::vector<double> feature_sums(size_t(threads) * count * channels, 0.0);
  // A static schedule keeps the summation order, and so the result, the same on every call.
#pragma omp parallel for schedule(static, 1) if (parallel)
  for (int tile = 0; tile < tiles; ++tile) {
    SplatGrad<double>* acc = sums.data() + size_t(thread_id()) * count;
    double* feature_acc = feature_sums.data() + size_t(thread_id()) * count * channels;
    std::vector<T> upstream(channels);
    const TilePixels tp = tile_pixels(cam, tile);
    const int begin = lists.tile_ranges[2 * tile];
    for (int y = tp.y0; y < tp.y1; ++y) {
      for (int x = tp.x0; x < tp.x1; ++x) {
        const int p = y * cam.width + x;
        const int last = px.n_contrib[p];
        if (last == 0) continue;
        PixelBackward<T> pb;
        pb.init(px, grads, p, plane, cam.background);
        FeatureBackward<T> fb;
        if (kFeatures) {
          fb.reset();
          for (int c = 0; c < channels; ++c) upstream[c] = extra.feature_map[size_t(c) * plane + p];
        }
        const int median_position = kMedian ? extra.median_contrib[p] : 0;
        for (int k = begin + last - 1; k >= begin; --k) {
          const int id = lists.point_list[k];
          T alpha, G;
          Vec2<T> d;
          if (!splat_alpha(state.means2d[id], state.conic_opacity[id], T(x), T(y), alpha, G, d))
            continue;
          SplatGrad<T> g;
          if (kFeatures) {
            T dalpha = pb.unblend(alpha, state.features[id], g);
            const T* feature = extra.features + size_t(id) * channels;
            dalpha += fb.step(alpha, pb.transmittance, feature, upstream.data(), channels);
            alpha_grad_to_splat(dalpha, G, d, state.conic_opacity[id], g);
            const T w = alpha * pb.transmittance;
            double* out = feature_acc + size_t(id) * channels;
            for (int c = 0; c < channels; ++c) out[c] += w * upstream[c];
          } else {
            pb.step(alpha, G, d, state.conic_opacity[id], state.features[id], g);
          }
          if (kMedian && k - begin + 1 == median_position) g.feature.w += extra.median[p];
          add(acc[id], g);
        }
      }
    }
  }
#pragma omp parallel for schedule(static) if (count >= kMinParallelItems)
  for (int i = 0; i < count; ++i) {
    SplatGrad<double> total = sums[i];
    for (int t = 1; t < threads; ++t) add(total, sums[size_t(t) * count + i]);
    splat_grads[i] = {{T(total.mean2d.x), T(total.mean2d.y)},
                      {T(total.conic.a), T(total.conic.b), T(total.conic.c)},
                      T(total.opacity),
                      {T(total.feature.x), T(total.feature.y), T(total.feature.z),
                       T(total.feature.w)}};
    for (int c = 0; c < channels; ++c) {
      double f = feature_sums[size_t(i) * channels + c];
      for (int t = 1; t < threads; ++t) f += feature_sums[(size_t(t) * count + i) * channels + c];
      extra.features_grad[size_t(i) * channels + c] = T(f);
    }
  }
}

}  // namespace

template <typename T>
void render(const Camera<T>& cam, const GaussianState<T>& state, TileLists lists,
            const PixelBuffers<T>& px, const OptionalOutputs<T>& extra) {
  if (extra.has_features()) {
    if (extra.has_median())
      render_pixels<true, true>(cam, state, lists, px, extra);
    else
      render_pixels<true, false>(cam, state, lists, px, extra);
  } else {
    if (extra.has_median())
      render_pixels<false, true>(cam, state, lists, px, extra);
    else
      render_pixels<false, false>(cam, state, lists, px, extra);
  }
}

template <typename T>
void render_backward(const Camera<T>& cam, const GaussianState<T>& state, TileLists lists,
                     const PixelBuffers<T>& px, PixelGrads<T> grads,
                     const OptionalGrads<T>& extra, int count, SplatGrad<T>* splat_grads) {
  if (extra.has_features()) {
    if (extra.has_median())
      render_pixels_backward<true, true>(cam, state, lists, px, grads, extra, count, splat_grads);
    else
      render_pixels_backward<true, false>(cam, state, lists, px, grads, extra, count, splat_grads);
  } else {
    if (extra.has_median())
      render_pixels_backward<false, true>(cam, state, lists, px, grads, extra, count, splat_grads);
    else
      render_pixels_backward<false, false>(cam, state, lists, px, grads, extra, count,
                                           splat_grads);
  }
}

template <typename T>
void preprocess_backward(const Camera<T>& cam, const GaussianInputs<T>& in, const int* radii,
                         const SplatGrad<T>* splat_grads, const GaussianGrads<T>& out) {
#pragma omp parallel for schedule(static) if (in.count >= kMinParallelItems)
  for (int i = 0; i < in.count; ++i) {
    if (radii[i] > 0) preprocess_gaussian_backward(cam, in, i, splat_grads[i], out);
  }
}

#define DGRD_INSTANTIATE(T)                                                                     \
  template void preprocess<T>(const Camera<T>&, const GaussianInputs<T>&,                        \
                              const GaussianState<T>&);                                          \
  template void bin_gaussians<T>(const Camera<T>&, int, const GaussianState<T>&, int*, int*);    \
  template void render<T>(const Camera<T>&, const GaussianState<T>&, TileLists,                  \
                          const PixelBuffers<T>&, const OptionalOutputs<T>&);                    \
  template void render_backward<T>(const Camera<T>&, const GaussianState<T>&, TileLists,         \
                                   const PixelBuffers<T>&, PixelGrads<T>,                        \
                                   const OptionalGrads<T>&, int, SplatGrad<T>*);                 \
  template void preprocess_backward<T>(const Camera<T>&, const GaussianInputs<T>&, const int*,   \
                                       const SplatGrad<T>*, const GaussianGrads<T>&);
DGRD_INSTANTIATE(float)
DGRD_INSTANTIATE(double)
#undef DGRD_INSTANTIATE

}  // namespace cpu
}  // namespace dgrd
