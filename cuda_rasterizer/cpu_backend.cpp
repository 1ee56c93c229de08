// The CPU backend: loops over Gaussians, tiles and pixels calling the shared math headers.
#include "cpu_backend.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/resource.h>
#include <unistd.h>
#define DGRD_HAS_PROC_LOAD 1
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#include "blend.h"
#include "cpu_lanes.h"
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

// Cores that other processes kept busy, measured between calls from /proc/stat's busy time less
// this process's own CPU time (0 where /proc is missing).
class OtherLoad {
 public:
  double cores_busy() {
    const std::lock_guard<std::mutex> lock(mutex_);
    // /proc/stat counts in 10 ms ticks: within 50 ms of the last sample, the last estimate
    // stands, and no file is read (a call runs several loops).
    if (last_.valid && wall_seconds() - last_.wall < 0.05) return busy_;
    const Sample now = sample();
    if (!now.valid) return 0;
    if (!last_.valid) {
      last_ = now;
    } else {
      const double others = (now.busy - last_.busy) - (now.own - last_.own);
      busy_ = std::max(0.0, others / (now.wall - last_.wall));
      last_ = now;
    }
    return busy_;
  }

 private:
  struct Sample {
    bool valid = false;
    double wall = 0, busy = 0, own = 0;  // seconds
  };
  static double wall_seconds() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  static Sample sample() {
    Sample s;
#ifdef DGRD_HAS_PROC_LOAD
    std::ifstream stat("/proc/stat");
    std::string cpu;
    double ticks[8] = {};
    if (!(stat >> cpu) || cpu != "cpu") return s;
    for (double& t : ticks)
      if (!(stat >> t)) return s;
    const double hz = double(sysconf(_SC_CLK_TCK));
    s.busy = (ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7]) / hz;
    rusage self;
    getrusage(RUSAGE_SELF, &self);
    s.own = double(self.ru_utime.tv_sec + self.ru_stime.tv_sec) +
            1e-6 * double(self.ru_utime.tv_usec + self.ru_stime.tv_usec);
    s.wall = wall_seconds();
    s.valid = hz > 0;
#endif
    return s;
  }
  std::mutex mutex_;
  Sample last_;
  double busy_ = 0;
};

// Threads for the loops whose results do not depend on their number: OpenMP's count, less the
// cores other processes keep busy. A loop ends when its last thread does, and a thread that
// shares a core with another process is set aside for whole time slices: with one core taken,
// two threads finish later than one.
int loop_threads() {
  const int wanted = thread_count();
  if (wanted <= 1) return 1;
  static OtherLoad load;
#ifdef _OPENMP
  const int cores = omp_get_num_procs();
#else
  const int cores = 1;
#endif
  const int free_cores = int(std::lround(double(cores) - load.cores_busy()));
  return std::max(1, std::min(wanted, free_cores));
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

template <typename A, typename T>
void add(CameraGrad<A>& acc, const CameraGrad<T>& g) {
  for (int k = 0; k < 16; ++k) acc.viewmatrix[k] += g.viewmatrix[k];
  for (int k = 0; k < 16; ++k) acc.projmatrix[k] += g.projmatrix[k];
  for (int k = 0; k < 3; ++k) acc.campos[k] += g.campos[k];
}

// Loops smaller than this run on one thread: waking the pool costs more than they do.
constexpr int kMinParallelItems = 4096;

// Per-Gaussian sums, accumulated in double, handed over in the backend's type.
template <typename T>
void to_splat_grads(const SplatGrad<double>* totals, int count, SplatGrad<T>* splat_grads) {
#pragma omp parallel for schedule(static) if (count >= kMinParallelItems) \
    num_threads(loop_threads())
  for (int i = 0; i < count; ++i) {
    const SplatGrad<double>& t = totals[i];
    splat_grads[i] = {{T(t.mean2d.x), T(t.mean2d.y)},
                      {T(t.conic.a), T(t.conic.b), T(t.conic.c)},
                      T(t.opacity),
                      {T(t.feature.x), T(t.feature.y), T(t.feature.z), T(t.feature.w)}};
  }
}


}  // namespace

// ---------------------------------------------------------------- float: eight pixels at once
//
// The float render walks each tile row in groups of kLanes pixels: every splat is tested on the
// whole group with the shared formulas evaluated on Lanes, and lanes that do not blend it pass
// alpha = 0, which leaves their state bit for bit unchanged. Most tests fail (alpha < 1/255), so
// a per-splat bound on the power rejects them before the exponential.

// The lane loops are compiled for AVX2 and for the baseline, and the loader picks one for the
// machine at hand (GCC's function multi-versioning; elsewhere the baseline alone).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DGRD_LANE_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define DGRD_LANE_CLONES
#endif

// A tile's splats staged structure-of-arrays in list order, with what the lanes test first.
struct StagedSplats {
  std::vector<float> mean_x, mean_y, conic_a, conic_b, conic_c, opacity, power_floor;
  std::vector<float> red, green, blue, depth;

  void stage(const GaussianState<float>& s, const float* floors, const int* ids, int n) {
    for (auto* v : {&mean_x, &mean_y, &conic_a, &conic_b, &conic_c, &opacity, &power_floor, &red,
                    &green, &blue, &depth})
      if (int(v->size()) < n) v->resize(size_t(n));
    for (int j = 0; j < n; ++j) {
      const int id = ids[j];
      mean_x[j] = s.means2d[id].x;
      mean_y[j] = s.means2d[id].y;
      const Vec4<float> co = s.conic_opacity[id];
      conic_a[j] = co.x;
      conic_b[j] = co.y;
      conic_c[j] = co.z;
      opacity[j] = co.w;
      power_floor[j] = floors[id];
      const Vec4<float> f = s.features[id];
      red[j] = f.x;
      green[j] = f.y;
      blue[j] = f.z;
      depth[j] = f.w;
    }
  }
  Vec4<float> conic_opacity(int j) const { return {conic_a[j], conic_b[j], conic_c[j], opacity[j]}; }
  Vec4<float> feature(int j) const { return {red[j], green[j], blue[j], depth[j]}; }
};


// One group of lanes: eight pixels of a row, and which of them lie inside the image.
struct LaneGroup {
  int x0, y, count;  // pixels (x0 .. x0 + count - 1, y)
  Lanes px() const {
    Lanes x;
    for (int k = 0; k < kLanes; ++k) x.v[k] = float(x0 + k);
    return x;
  }
  LaneMask inside() const {
    LaneMask m;
    for (int k = 0; k < kLanes; ++k) m.m[k] = k < count ? -1 : 0;
    return m;
  }
};

// The lanes where splat j is blended at all (alpha >= 1/255 and power <= 0), with G and alpha.
DGRD_LANE_FN LaneMask lane_alpha(const StagedSplats& sp, int j, Lanes px, float py,
                                 LaneMask live, Lanes& G, Lanes& alpha, Vec2<Lanes>& d) {
  d = {Lanes(sp.mean_x[j]) - px, Lanes(sp.mean_y[j] - py)};
  const Vec4<Lanes> co = {sp.conic_a[j], sp.conic_b[j], sp.conic_c[j], sp.opacity[j]};
  const Lanes power = splat_power(co, d);
  LaneMask pass = live & (power <= Lanes(0.f)) & (power >= Lanes(sp.power_floor[j]));
  if (!pass.any()) return pass;
  G = splat_exp(power);
  alpha = min2(Lanes(float(kAlphaMax)), co.w * G);
  return pass & (alpha >= Lanes(float(kAlphaMin)));
}

DGRD_LANE_CLONES void render_group(const Camera<float>& cam, const StagedSplats& sp, int n, const LaneGroup& g,
                  const PixelBuffers<float>& px) {
  const Lanes x = g.px();
  const float y = float(g.y);
  LaneMask live = g.inside();
  PixelAccum<Lanes> acc;
  acc.reset();
  LaneInts n_contrib = {};
  for (int j = 0; j < n; ++j) {
    Lanes G, alpha;
    Vec2<Lanes> d;
    const LaneMask pass = lane_alpha(sp, j, x, y, live, G, alpha, d);
    if (!pass.any()) continue;
    const Lanes next = acc.transmittance * (Lanes(1.f) - alpha);
    const LaneMask saturated = pass & (next < Lanes(float(kTransmittanceMin)));
    const LaneMask blended = pass & !saturated;
    acc.accumulate(zero_unless(blended, alpha), sp.feature(j));
    n_contrib = select(blended, LaneInts{} + (j + 1), n_contrib);
    live = live & !saturated;
    if (!live.any()) break;
  }
  const int64_t plane = int64_t(cam.width) * cam.height;
  for (int k = 0; k < g.count; ++k) {
    PixelAccum<float> one;
    for (int c = 0; c < kColorChannels; ++c) one.color[c] = acc.color[c][k];
    one.depth_sum = acc.depth_sum[k];
    one.weight = acc.weight[k];
    one.transmittance = acc.transmittance[k];
    one.store(px, g.y * cam.width + g.x0 + k, plane, cam.background, n_contrib[k]);
  }
}

// The lanes of a per-lane gradient sum added up, in double.
SplatGrad<double> lane_total(const SplatGrad<Lanes>& g) {
  auto sum = [](Lanes v) {
    double s = 0;
    for (int k = 0; k < kLanes; ++k) s += double(v[k]);
    return s;
  };
  return {{sum(g.mean2d.x), sum(g.mean2d.y)},
          {sum(g.conic.a), sum(g.conic.b), sum(g.conic.c)},
          sum(g.opacity),
          {sum(g.feature.x), sum(g.feature.y), sum(g.feature.z), sum(g.feature.w)}};
}

// Adds the gradients of one tile's splats at one group of pixels, walking the lanes back to
// front. sums[j] is splat j of the tile (list order), per lane.
DGRD_LANE_CLONES void render_backward_group(const Camera<float>& cam, const StagedSplats& sp, const LaneGroup& g,
                           const PixelBuffers<float>& px, const PixelGrads<float>& grads,
                           SplatGrad<Lanes>* sums) {
  const int64_t plane = int64_t(cam.width) * cam.height;
  PixelBackward<Lanes> pb;
  LaneInts last = {};
  int group_last = 0;
  for (int k = 0; k < kLanes; ++k) {
    PixelBackward<float> one;
    const int p = g.y * cam.width + g.x0 + k;
    if (k < g.count) {
      one.init(px, grads, p, plane, cam.background);
      last[k] = px.n_contrib[p];
      group_last = std::max(group_last, int(last[k]));
    } else {
      one = PixelBackward<float>{};  // zeros: an outside lane takes no step
    }
    for (int f = 0; f < kFeatures; ++f) {
      pb.upstream[f].v[k] = one.upstream[f];
      pb.behind[f].v[k] = one.behind[f];
      pb.last_feature[f].v[k] = one.last_feature[f];
    }
    pb.background_dot.v[k] = one.background_dot;
    pb.final_transmittance.v[k] = one.final_transmittance;
    pb.transmittance.v[k] = one.transmittance;
    pb.last_alpha.v[k] = one.last_alpha;
  }
  const Lanes x = g.px();
  const float y = float(g.y);
  for (int j = group_last - 1; j >= 0; --j) {
    const LaneMask active = {LaneInts{} + j < last};
    Lanes G, alpha;
    Vec2<Lanes> d;
    const LaneMask pass = lane_alpha(sp, j, x, y, active, G, alpha, d);
    if (!pass.any()) continue;
    const Vec4<float> co = sp.conic_opacity(j), f = sp.feature(j);
    SplatGrad<Lanes> lane_grad;
    pb.step(zero_unless(pass, alpha), zero_unless(pass, G), d,
            Vec4<Lanes>{co.x, co.y, co.z, co.w}, Vec4<Lanes>{f.x, f.y, f.z, f.w}, lane_grad);
    add(sums[j], lane_grad);
  }
}

template <typename T>
void preprocess(const Camera<T>& cam, const GaussianInputs<T>& in, const GaussianState<T>& state) {
#pragma omp parallel for schedule(static) if (in.count >= kMinParallelItems) \
    num_threads(loop_threads())
  for (int i = 0; i < in.count; ++i) state.store(i, preprocess_gaussian(cam, in, i));
}

// The Gaussians that survived the preprocess, in ascending depth with ties by index: appending
// them in this order to their tiles' lists leaves every list sorted, with no per-tile sort.
template <typename T>
std::vector<int> depth_order(int count, const GaussianState<T>& state) {
  std::vector<int> ids;
  ids.reserve(static_cast<size_t>(count));
  for (int i = 0; i < count; ++i)
    if (state.radii[i] != 0) ids.push_back(i);
  const Vec4<T>* f = state.features;
  if constexpr (std::is_same<T, float>::value) {
    // Depths are > 0.2, so their bits order like them: one 64-bit key sorts by (depth, index).
    std::vector<uint64_t> keys(ids.size());
    for (size_t k = 0; k < ids.size(); ++k)
      keys[k] = (uint64_t(uint32_t(float_bits(f[ids[k]].w))) << 32) | uint32_t(ids[k]);
    std::sort(keys.begin(), keys.end());
    for (size_t k = 0; k < ids.size(); ++k) ids[k] = int(keys[k] & 0xffffffffu);
  } else {
    std::sort(ids.begin(), ids.end(),
              [f](int a, int b) { return f[a].w < f[b].w || (f[a].w == f[b].w && a < b); });
  }
  return ids;
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
  for (const int i : depth_order(count, state)) {
    const TileRect r = state.rects[i];
    for (int y = r.y0; y < r.y1; ++y)
      for (int x = r.x0; x < r.x1; ++x) point_list[cursor[y * cam.tiles_x + x]++] = i;
  }
}

namespace {

// Below this power a splat of opacity o cannot reach alpha 1/255: o exp(p) < 1/255 for
// p < log(1 / (255 o)). The margin (1e-3 in the exponent) dwarfs the rounding of exp_poly and of
// the product, so the bound skips only splats the exact test would skip too.
template <typename T>
T power_floor(T opacity) {
  return T(std::log(kAlphaMin / double(opacity)) - 1e-3);
}

// The power bound of every Gaussian (-inf, bounding nothing, with the bound switched off).
template <typename T>
std::vector<T> power_floors(const GaussianState<T>& state, int count) {
  std::vector<T> floors(static_cast<size_t>(count), T(-INFINITY));
  if (!cpu_tuning().power_bound) return floors;
#pragma omp parallel for schedule(static) if (count >= kMinParallelItems) \
    num_threads(loop_threads())
  for (int i = 0; i < count; ++i) floors[i] = power_floor(state.conic_opacity[i].w);
  return floors;
}

// Whether the power bound rejects splat `id` at pixel (x, y) before splat_alpha's exp.
template <typename T>
bool below_power_floor(const GaussianState<T>& state, const T* floors, int id, T x, T y) {
  const Vec2<T> d = {state.means2d[id].x - x, state.means2d[id].y - y};
  return splat_power(state.conic_opacity[id], d) < floors[id];
}

// The per-pixel render in the shared math's scalar form: float64 (gradcheck) and the optional
// outputs, specialized at compile time on them so that the plain call runs the same code as
// without them.
template <bool kFeatures, bool kMedian, typename T>
void render_pixels(const Camera<T>& cam, const GaussianState<T>& state, int count,
                   TileLists lists, const PixelBuffers<T>& px, const OptionalOutputs<T>& extra) {
  const std::vector<T> floors = power_floors(state, count);
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
          if (below_power_floor(state, floors.data(), id, T(x), T(y))) continue;
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
  const std::vector<T> floors = power_floors(state, count);
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
          if (below_power_floor(state, floors.data(), id, T(x), T(y))) continue;
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
    for (int t = 1; t < threads; ++t) add(sums[i], sums[size_t(t) * count + i]);
    for (int c = 0; c < channels; ++c) {
      double f = feature_sums[size_t(i) * channels + c];
      for (int t = 1; t < threads; ++t) f += feature_sums[(size_t(t) * count + i) * channels + c];
      extra.features_grad[size_t(i) * channels + c] = T(f);
    }
  }
  to_splat_grads(sums.data(), count, splat_grads);
}

}  // namespace

CpuTuning& cpu_tuning() {
  static CpuTuning tuning;
  return tuning;
}

void render_lanes(const Camera<float>& cam, const GaussianState<float>& state, int count,
                  TileLists lists, const PixelBuffers<float>& px) {
  const std::vector<float> floors = power_floors(state, count);
  const int tiles = cam.tiles_x * cam.tiles_y;
  const int plane = cam.width * cam.height;
#pragma omp parallel if (plane >= kMinParallelItems) num_threads(loop_threads())
  {
    StagedSplats sp;
#pragma omp for schedule(dynamic, 1)
    for (int tile = 0; tile < tiles; ++tile) {
      const TilePixels tp = tile_pixels(cam, tile);
      const int begin = lists.tile_ranges[2 * tile], n = lists.tile_ranges[2 * tile + 1] - begin;
      sp.stage(state, floors.data(), lists.point_list + begin, n);
      for (int y = tp.y0; y < tp.y1; ++y)
        for (int x = tp.x0; x < tp.x1; x += kLanes)
          render_group(cam, sp, n, {x, y, std::min(kLanes, tp.x1 - x)}, px);
    }
  }
}

void render_backward_lanes(const Camera<float>& cam, const GaussianState<float>& state,
                           TileLists lists, const PixelBuffers<float>& px,
                           const PixelGrads<float>& grads, int count,
                           SplatGrad<float>* splat_grads) {
  const std::vector<float> floors = power_floors(state, count);
  const int tiles = cam.tiles_x * cam.tiles_y;
  const int plane = cam.width * cam.height;
  const int64_t pairs = tiles > 0 ? lists.tile_ranges[2 * tiles - 1] : 0;
  // Each (tile, splat) pair gets its own sum, so a tile's result does not depend on which
  // thread ran it: scheduling is free to be dynamic and the gradients still repeat exactly.
  std::unique_ptr<SplatGrad<double>[]> pair_sums(new SplatGrad<double>[size_t(pairs)]);
  std::vector<int> visited(size_t(tiles), 0);  // splats of each tile a pixel reached
#pragma omp parallel if (plane >= kMinParallelItems) num_threads(loop_threads())
  {
    StagedSplats sp;
    std::vector<SplatGrad<Lanes>> lane_sums;  // the tile's splats, summed per lane
#pragma omp for schedule(dynamic, 1)
    for (int tile = 0; tile < tiles; ++tile) {
      const TilePixels tp = tile_pixels(cam, tile);
      const int begin = lists.tile_ranges[2 * tile];
      int n = 0;
      for (int y = tp.y0; y < tp.y1; ++y)
        for (int x = tp.x0; x < tp.x1; ++x) n = std::max(n, px.n_contrib[y * cam.width + x]);
      visited[tile] = n;
      if (n == 0) continue;
      sp.stage(state, floors.data(), lists.point_list + begin, n);
      lane_sums.assign(size_t(n), SplatGrad<Lanes>{});
      for (int y = tp.y0; y < tp.y1; ++y)
        for (int x = tp.x0; x < tp.x1; x += kLanes)
          render_backward_group(cam, sp, {x, y, std::min(kLanes, tp.x1 - x)}, px, grads,
                                lane_sums.data());
      for (int j = 0; j < n; ++j) pair_sums[begin + j] = lane_total(lane_sums[j]);
    }
  }
  // Pairs are added into their Gaussians in tile order: a fixed order, so a fixed result.
  std::vector<SplatGrad<double>> totals(static_cast<size_t>(count));
  std::memset(static_cast<void*>(totals.data()), 0, totals.size() * sizeof(SplatGrad<double>));
  for (int tile = 0; tile < tiles; ++tile) {
    const int begin = lists.tile_ranges[2 * tile];
    for (int j = 0; j < visited[tile]; ++j) add(totals[lists.point_list[begin + j]], pair_sums[begin + j]);
  }
  to_splat_grads(totals.data(), count, splat_grads);
}

RenderWork count_render_work(const Camera<float>& cam, const GaussianState<float>& state,
                             int count, TileLists lists) {
  const std::vector<float> floors = power_floors(state, count);
  const int tiles = cam.tiles_x * cam.tiles_y;
  int64_t evaluations = 0, exps = 0, blends = 0, lane_steps = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : evaluations, exps, blends, lane_steps)
  for (int tile = 0; tile < tiles; ++tile) {
    const TilePixels tp = tile_pixels(cam, tile);
    const int begin = lists.tile_ranges[2 * tile], end = lists.tile_ranges[2 * tile + 1];
    for (int y = tp.y0; y < tp.y1; ++y)
      for (int x0 = tp.x0; x0 < tp.x1; x0 += kLanes) {
        int group_steps = 0;  // a group of lanes runs until its last pixel stops
        for (int x = x0; x < std::min(x0 + kLanes, tp.x1); ++x) {
          PixelAccum<float> acc;
          acc.reset();
          int k = begin;
          for (; k < end; ++k) {
            const int id = lists.point_list[k];
            ++evaluations;
            const Vec2<float> d = {state.means2d[id].x - float(x), state.means2d[id].y - float(y)};
            const float power = splat_power(state.conic_opacity[id], d);
            if (power <= 0.f && power >= floors[id]) ++exps;
            float alpha, G;
            Vec2<float> d2;
            if (!splat_alpha(state.means2d[id], state.conic_opacity[id], float(x), float(y), alpha,
                             G, d2))
              continue;
            if (!acc.blend(alpha, state.features[id])) break;
            ++blends;
          }
          group_steps = std::max(group_steps, std::min(k + 1, end) - begin);
        }
        lane_steps += group_steps;
      }
  }
  return {lists.tile_ranges[2 * tiles - 1], evaluations, exps, blends, lane_steps * kLanes};
}

// Float without optional outputs takes the eight-lane path; float64 and the optional outputs
// take the per-pixel loop, specialized on what is asked for.
template <typename T>
void render(const Camera<T>& cam, const GaussianState<T>& state, int count, TileLists lists,
            const PixelBuffers<T>& px, const OptionalOutputs<T>& extra) {
  if (extra.has_features()) {
    if (extra.has_median())
      render_pixels<true, true>(cam, state, count, lists, px, extra);
    else
      render_pixels<true, false>(cam, state, count, lists, px, extra);
  } else if (extra.has_median()) {
    render_pixels<false, true>(cam, state, count, lists, px, extra);
  } else {
    if constexpr (std::is_same<T, float>::value) {
      if (cpu_tuning().lanes) return render_lanes(cam, state, count, lists, px);
    }
    render_pixels<false, false>(cam, state, count, lists, px, extra);
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
  } else if (extra.has_median()) {
    render_pixels_backward<false, true>(cam, state, lists, px, grads, extra, count, splat_grads);
  } else {
    if constexpr (std::is_same<T, float>::value) {
      if (cpu_tuning().lanes)
        return render_backward_lanes(cam, state, lists, px, grads, count, splat_grads);
    }
    render_pixels_backward<false, false>(cam, state, lists, px, grads, extra, count,
                                         splat_grads);
  }
}

template <typename T>
void preprocess_backward(const Camera<T>& cam, const GaussianInputs<T>& in, const int* radii,
                         const SplatGrad<T>* splat_grads, const GaussianGrads<T>& out,
                         CameraGrad<T>* camera) {
  if (!camera) {
#pragma omp parallel for schedule(static) if (in.count >= kMinParallelItems) \
    num_threads(loop_threads())
    for (int i = 0; i < in.count; ++i) {
      if (radii[i] > 0) preprocess_gaussian_backward(cam, in, i, splat_grads[i], out);
    }
    return;
  }
  // The camera gradient sums every Gaussian's share: per-thread partial sums in double over the
  // contiguous blocks of a static schedule, combined in thread order, so the result is the same
  // on every call.
  const bool parallel = in.count >= kMinParallelItems;
  const int threads = parallel ? thread_count() : 1;
  std::vector<CameraGrad<double>> partial(size_t(threads), CameraGrad<double>{});
#pragma omp parallel for schedule(static) if (parallel)
  for (int i = 0; i < in.count; ++i) {
    if (radii[i] == 0) continue;
    CameraGrad<T> share;
    preprocess_gaussian_backward(cam, in, i, splat_grads[i], out, &share);
    add(partial[size_t(thread_id())], share);
  }
  CameraGrad<double> total = {};
  for (const CameraGrad<double>& p : partial) add(total, p);
  for (int k = 0; k < 16; ++k) camera->viewmatrix[k] = T(total.viewmatrix[k]);
  for (int k = 0; k < 16; ++k) camera->projmatrix[k] = T(total.projmatrix[k]);
  for (int k = 0; k < 3; ++k) camera->campos[k] = T(total.campos[k]);
}

#define DGRD_INSTANTIATE(T)                                                                     \
  template void preprocess<T>(const Camera<T>&, const GaussianInputs<T>&,                        \
                              const GaussianState<T>&);                                          \
  template void bin_gaussians<T>(const Camera<T>&, int, const GaussianState<T>&, int*, int*);    \
  template void render<T>(const Camera<T>&, const GaussianState<T>&, int, TileLists,             \
                          const PixelBuffers<T>&, const OptionalOutputs<T>&);                    \
  template void render_backward<T>(const Camera<T>&, const GaussianState<T>&, TileLists,         \
                                   const PixelBuffers<T>&, PixelGrads<T>,                        \
                                   const OptionalGrads<T>&, int, SplatGrad<T>*);                 \
  template void preprocess_backward<T>(const Camera<T>&, const GaussianInputs<T>&, const int*,   \
                                       const SplatGrad<T>*, const GaussianGrads<T>&,           \
                                       CameraGrad<T>*);
DGRD_INSTANTIATE(float)
DGRD_INSTANTIATE(double)
#undef DGRD_INSTANTIATE

}  // namespace cpu
}  // namespace dgrd
