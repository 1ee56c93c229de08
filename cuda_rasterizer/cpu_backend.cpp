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
#elif defined(_WIN32)
#include "windows_headers.h"  // GetSystemTimes, GetProcessTimes
#define DGRD_HAS_WINDOWS_LOAD 1
#endif

#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef _MSC_VER
#include <intrin.h>  // __cpuid, __cpuidex (lanes_pay)
#endif

#include "blend.h"
#include "cpu_lanes.h"
#include "opacity_field.h"
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
// this process's own CPU time (GetSystemTimes and GetProcessTimes on Windows; 0 elsewhere).
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
#elif defined(DGRD_HAS_WINDOWS_LOAD)
    // Times in 100 ns units, summed over all cores; the system's kernel time includes its idle.
    FILETIME idle, kernel, user, created, exited, own_kernel, own_user;
    if (!GetSystemTimes(&idle, &kernel, &user) ||
        !GetProcessTimes(GetCurrentProcess(), &created, &exited, &own_kernel, &own_user))
      return s;
    const auto seconds = [](FILETIME t) {
      return 1e-7 * double((uint64_t(t.dwHighDateTime) << 32) | t.dwLowDateTime);
    };
    s.busy = seconds(kernel) + seconds(user) - seconds(idle);
    s.own = seconds(own_kernel) + seconds(own_user);
    s.wall = wall_seconds();
    s.valid = true;
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
[[maybe_unused]] int loop_threads() {
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
void add(Vec2<A>& acc, Vec2<T> v) {
  acc.x += v.x;
  acc.y += v.y;
}

template <typename A, typename T>
void add(CameraGrad<A>& acc, const CameraGrad<T>& g) {
  for (int k = 0; k < 16; ++k) acc.viewmatrix[k] += g.viewmatrix[k];
  for (int k = 0; k < 16; ++k) acc.projmatrix[k] += g.projmatrix[k];
  for (int k = 0; k < 3; ++k) acc.campos[k] += g.campos[k];
  for (int k = 0; k < 2; ++k) acc.tanfov[k] += g.tanfov[k];
  for (int k = 0; k < kLensCoefficients; ++k) acc.distortion[k] += g.distortion[k];
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

// ---------------------------------------------------------------- float: eight pixels at once
//
// The float render walks each tile row in groups of kLanes pixels: every splat is tested on the
// whole group with the shared formulas evaluated on Lanes, and lanes that do not blend it pass
// alpha = 0, which leaves their state bit for bit unchanged. Most tests fail (alpha < 1/255), so
// a per-splat bound on the power rejects them before the exponential.

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

// A tile's feature channels (issue 12) in list order, splat j at channels() * j.
struct StagedFeatures {
  std::vector<float> values;
  int channels = 0;

  void stage(const float* features, int channels_, const int* ids, int n) {
    channels = channels_;
    if (values.size() < size_t(n) * channels) values.resize(size_t(n) * channels);
    for (int j = 0; j < n; ++j)
      std::memcpy(values.data() + size_t(j) * channels, features + size_t(ids[j]) * channels,
                  size_t(channels) * sizeof(float));
  }
  const float* of(int j) const { return values.data() + size_t(j) * channels; }
};

// Median depth on lanes: MedianDepth's state, updated where crosses_median holds.
struct LaneMedian {
  Lanes depth;
  LaneInts position = {};
  DGRD_LANE_FN void update(LaneMask blended, Lanes before, Lanes after, float z, int position_) {
    const LaneMask crossing = blended & crosses_median(before, after);
    depth = select(crossing, Lanes(z), depth);
    position = select(crossing, LaneInts{} + position_, position);
  }
};


// One group of lanes: eight pixels of a row, which of them lie inside the image, and where
// they sample the splats.
struct LaneGroup {
  int x0, y, count;  // pixels (x0 .. x0 + count - 1, y)
  const float* offset = nullptr;  // Camera::subpixel_offset of pixel (x0, y) on, or null
  // Camera::sample_point of each lane (x0 + k, y), as the per-pixel loops take it
  Lanes px() const {
    Lanes x;
    for (int k = 0; k < kLanes; ++k) x.v[k] = float(x0 + k);
    if (offset)
      for (int k = 0; k < count; ++k) x.v[k] += offset[2 * k];
    return x;
  }
  Lanes py() const {
    Lanes y_ = Lanes(float(y));
    if (offset)
      for (int k = 0; k < count; ++k) y_.v[k] += offset[2 * k + 1];
    return y_;
  }
  LaneMask inside() const {
    LaneMask m;
    for (int k = 0; k < kLanes; ++k) m.m[k] = k < count ? -1 : 0;
    return m;
  }
};

// The group of lanes at pixel (x, y) of a tile row that ends before x_end.
LaneGroup lane_group(const Camera<float>& cam, int x, int y, int x_end) {
  const float* offset = cam.subpixel_offset;
  return {x, y, std::min(kLanes, x_end - x),
          offset ? offset + 2 * (int64_t(y) * cam.width + x) : nullptr};
}

// The lanes where splat j is blended at all (alpha >= 1/255 and power <= 0), with G and alpha.
DGRD_LANE_FN LaneMask lane_alpha(const StagedSplats& sp, int j, Lanes px, Lanes py,
                                 LaneMask live, Lanes& G, Lanes& alpha, Vec2<Lanes>& d) {
  d = {Lanes(sp.mean_x[j]) - px, Lanes(sp.mean_y[j]) - py};
  const Vec4<Lanes> co = {sp.conic_a[j], sp.conic_b[j], sp.conic_c[j], sp.opacity[j]};
  const Lanes power = splat_power(co, d);
  LaneMask pass = live & (power <= Lanes(0.f)) & (power >= Lanes(sp.power_floor[j]));
  if (!pass.any()) return pass;
  G = splat_exp(power);
  alpha = min2(Lanes(float(kAlphaMax)), co.w * G);
  return pass & (alpha >= Lanes(float(kAlphaMin)));
}

// Renders one group of lanes, and the optional outputs asked for: feature channels into
// feature_sum (C lanes of scratch) and the median depth.
template <bool kWithFeatures, bool kWithMedian>
DGRD_LANE_CLONES void render_group(const Camera<float>& cam, const StagedSplats& sp, int n,
                                   const LaneGroup& g, const PixelBuffers<float>& px,
                                   const StagedFeatures& features,
                                   const OptionalOutputs<float>& extra, Lanes* feature_sum) {
  const Lanes x = g.px(), y = g.py();
  LaneMask live = g.inside();
  PixelAccum<Lanes> acc;
  acc.reset();
  LaneInts n_contrib = {};
  const int channels = kWithFeatures ? features.channels : 0;
  for (int c = 0; c < channels; ++c) feature_sum[c] = Lanes(0.f);
  LaneMedian median;
  for (int j = 0; j < n; ++j) {
    Lanes G, alpha;
    Vec2<Lanes> d;
    const LaneMask pass = lane_alpha(sp, j, x, y, live, G, alpha, d);
    if (!pass.any()) continue;
    const Lanes next = acc.transmittance * (Lanes(1.f) - alpha);
    const LaneMask saturated = pass & (next < Lanes(float(kTransmittanceMin)));
    const LaneMask blended = pass & !saturated;
    const Lanes before = acc.transmittance;
    acc.accumulate(zero_unless(blended, alpha), sp.feature(j));
    n_contrib = select(blended, LaneInts{} + (j + 1), n_contrib);
    if (kWithFeatures) {
      // blend_features per lane; a lane that does not blend the splat adds nothing, even for
      // a non-finite feature (0 x inf would be NaN).
      const Lanes w = alpha * before;
      const float* f = features.of(j);
      for (int c = 0; c < channels; ++c) feature_sum[c] += zero_unless(blended, w * f[c]);
    }
    if (kWithMedian) median.update(blended, before, acc.transmittance, sp.depth[j], j + 1);
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
    const int p = g.y * cam.width + g.x0 + k;
    one.store(px, p, plane, cam.background, n_contrib[k]);
    if (kWithFeatures && g.count < kLanes)
      for (int c = 0; c < channels; ++c) extra.feature_map[c * plane + p] = feature_sum[c][k];
    if (kWithMedian) {
      extra.median[p] = median.depth[k];
      extra.median_contrib[p] = median.position[k];
    }
  }
  // A whole group's channels as eight-pixel rows (the scalar stores above, one plane apart,
  // were 7% of a 32-channel forward's render).
  if (kWithFeatures && g.count == kLanes)
    for (int c = 0; c < channels; ++c)
      feature_sum[c].store(extra.feature_map + c * plane + g.y * cam.width + g.x0);
}

// The touch count's walk (count_touches) of one group of lanes: each lane walks up to its first
// blended splat that does not touch it; by_position[j] gains the lanes that splat j touches.
DGRD_LANE_CLONES void count_group_touches(const StagedSplats& sp, int n, const LaneGroup& g,
                                          int* by_position) {
  const Lanes x = g.px(), y = g.py();
  LaneMask live = g.inside();
  Lanes transmittance(1.f);
  for (int j = 0; j < n; ++j) {
    Lanes G, alpha;
    Vec2<Lanes> d;
    const LaneMask pass = lane_alpha(sp, j, x, y, live, G, alpha, d);
    if (!pass.any()) continue;
    const Lanes after = transmittance * (Lanes(1.f) - alpha);
    const LaneMask touching = pass & touches(after);
    for (int k = 0; k < kLanes; ++k) by_position[j] += touching.lane(k);
    transmittance = select(touching, after, transmittance);
    live = live & !(pass & !touching);
    if (!live.any()) break;
  }
}

// One (tile, splat) pair's part of the contribution statistics (gaussian_contributions).
struct PairContribution {
  double weight_sum;
  double weight_max;
  int pixels;
  int dominated;
  double opacity_transmittance;

  // w = alpha T, and o T (the product of two floats is exact in double: the lanes and the
  // per-pixel loop add the same bits).
  void add(double w, double opacity_times_transmittance) {
    weight_sum += w;
    weight_max = std::max(weight_max, w);
    ++pixels;
    opacity_transmittance += opacity_times_transmittance;
  }
};

// The contribution statistics' walk of one group of lanes: each lane blends as the render does,
// up to its first splat that would saturate it; by_position[j] tallies splat j's weights, in
// lane order (the per-pixel loop's order within a row), and each lane's dominant splat, whose
// list position (-1: none) it writes to dominant_position[lane].
DGRD_LANE_CLONES void tally_group_contributions(const StagedSplats& sp, int n, const LaneGroup& g,
                                                PairContribution* by_position,
                                                int* dominant_position) {
  const Lanes x = g.px(), y = g.py();
  LaneMask live = g.inside();
  Lanes transmittance(1.f), best(0.f), best_at(-1.f);  // positions below 2^24: exact floats
  for (int j = 0; j < n; ++j) {
    Lanes G, alpha;
    Vec2<Lanes> d;
    const LaneMask pass = lane_alpha(sp, j, x, y, live, G, alpha, d);
    if (!pass.any()) continue;
    const Lanes after = transmittance * (Lanes(1.f) - alpha);
    const LaneMask saturated = pass & (after < Lanes(float(kTransmittanceMin)));
    const LaneMask blended = pass & !saturated;
    const Lanes w = alpha * transmittance;
    const double opacity = sp.opacity[j];
    for (int k = 0; k < kLanes; ++k)
      if (blended.lane(k)) by_position[j].add(double(w[k]), opacity * double(transmittance[k]));
    const LaneMask better = blended & (w > best);
    best = select(better, w, best);
    best_at = select(better, Lanes(float(j)), best_at);
    transmittance = select(blended, after, transmittance);
    live = live & !saturated;
    if (!live.any()) break;
  }
  for (int k = 0; k < g.count; ++k) {
    dominant_position[k] = best_at[k] >= 0.f ? int(best_at[k]) : -1;
    if (best_at[k] >= 0.f) ++by_position[int(best_at[k])].dominated;
  }
}

// The lanes of a per-lane sum added up, in double: the two halves as four-wide vectors, then
// a short tree (a serial chain of eight dependent adds was 4% of a 32-channel call's time).
DGRD_LANE_FN double lane_sum(Lanes v) {
  static_assert(kLanes == 8, "lane_sum adds two halves of four");
#if defined(DGRD_PORTABLE_LANES)
  double s[4];
  for (int k = 0; k < 4; ++k) s[k] = double(v[k]) + double(v[k + 4]);
#elif defined(DGRD_AVX2_LANES)
  alignas(32) double s[4];
  _mm256_store_pd(s, _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v.v.x)),
                                   _mm256_cvtps_pd(_mm256_extractf128_ps(v.v.x, 1))));
#else
  using Floats4 = float __attribute__((vector_size(4 * sizeof(float))));
  using Doubles4 = double __attribute__((vector_size(4 * sizeof(double))));
  const Floats4 low = __builtin_shufflevector(v.v, v.v, 0, 1, 2, 3);
  const Floats4 high = __builtin_shufflevector(v.v, v.v, 4, 5, 6, 7);
  const Doubles4 s = __builtin_convertvector(low, Doubles4) + __builtin_convertvector(high, Doubles4);
#endif
  return (s[0] + s[2]) + (s[1] + s[3]);
}

// The lanes of eight per-lane sums added up at once, each into out[i]: three rounds of shuffles
// and adds that halve the lanes while they interleave the sums (an 8x8 transpose folded into
// the additions), in float: 7 vector adds for 8 sums where lane_sum takes 4 adds a sum.
DGRD_LANE_FN void lane_sums8(const Lanes* v, double* out) {
  static_assert(kLanes == 8, "lane_sums8 folds eight lanes");
  LaneFloats pairs[4];
  for (int i = 0; i < 4; ++i) {
    const LaneFloats a = v[2 * i].v, b = v[2 * i + 1].v;
    pairs[i] = lane_shuffle<0, 8, 2, 10, 4, 12, 6, 14>(a, b) +
               lane_shuffle<1, 9, 3, 11, 5, 13, 7, 15>(a, b);
  }
  LaneFloats quads[2];
  for (int i = 0; i < 2; ++i) {
    const LaneFloats a = pairs[2 * i], b = pairs[2 * i + 1];
    quads[i] = lane_shuffle<0, 1, 8, 9, 4, 5, 12, 13>(a, b) +
               lane_shuffle<2, 3, 10, 11, 6, 7, 14, 15>(a, b);
  }
  const LaneFloats sums = lane_shuffle<0, 1, 2, 3, 8, 9, 10, 11>(quads[0], quads[1]) +
                          lane_shuffle<4, 5, 6, 7, 12, 13, 14, 15>(quads[0], quads[1]);
  for (int i = 0; i < 8; ++i) out[i] = double(sums[i]);
}

SplatGrad<double> lane_total(const SplatGrad<Lanes>& g) {
  return {{lane_sum(g.mean2d.x), lane_sum(g.mean2d.y)},
          {lane_sum(g.conic.a), lane_sum(g.conic.b), lane_sum(g.conic.c)},
          lane_sum(g.opacity),
          {lane_sum(g.feature.x), lane_sum(g.feature.y), lane_sum(g.feature.z),
           lane_sum(g.feature.w)}};
}

// What the optional outputs add to a tile's backward: their upstream gradients, the staged
// feature channels, and per-lane sums of the feature gradients (splat j at channels * j).
struct LaneFeatureGrads {
  const StagedFeatures* features = nullptr;
  std::vector<Lanes> sums;      // n x C
  std::vector<Lanes> upstream;  // C: the group's dL/d(feature map)
};

// Adds the gradients of one tile's splats at one group of pixels, walking the lanes back to
// front. sums[j] is splat j of the tile (list order), per lane; abs_sums[j] its part of AbsGS's
// statistic (OptionalGrads::mean2d_abs), or null when not asked for.
template <bool kWithFeatures, bool kWithMedian>
DGRD_LANE_CLONES void render_backward_group(const Camera<float>& cam, const StagedSplats& sp,
                                            const LaneGroup& g, const PixelBuffers<float>& px,
                                            const PixelGrads<float>& grads,
                                            const OptionalGrads<float>& extra,
                                            SplatGrad<Lanes>* sums, Vec2<Lanes>* abs_sums,
                                            LaneFeatureGrads& fg) {
  const int64_t plane = int64_t(cam.width) * cam.height;
  const int channels = kWithFeatures ? fg.features->channels : 0;
  PixelBackward<Lanes> pb;
  LaneInts last = {}, median_position = {};
  Lanes median_grad;
  Lanes* upstream = fg.upstream.data();
  int group_last = 0;
  for (int k = 0; k < kLanes; ++k) {
    PixelBackward<float> one;
    const int p = g.y * cam.width + g.x0 + k;
    const bool inside = k < g.count;
    if (inside) {
      one.init(px, grads, p, plane, cam.background);
      last[k] = px.n_contrib[p];
      group_last = std::max(group_last, int(last[k]));
    } else {
      one = PixelBackward<float>{};  // zeros: an outside lane takes no step
    }
    for (int f = 0; f < dgrd::kWalkedFeatures; ++f) {
      pb.upstream[f].v[k] = one.upstream[f];
      pb.behind[f].v[k] = one.behind[f];
    }
    pb.final_grad.v[k] = one.final_grad;
    pb.transmittance.v[k] = one.transmittance;
    for (int c = 0; c < channels; ++c)
      upstream[c].v[k] = inside ? extra.feature_map[c * plane + p] : 0.f;
    if (kWithMedian) {
      median_position[k] = inside ? extra.median_contrib[p] : 0;
      median_grad.v[k] = inside ? extra.median[p] : 0.f;
    }
  }
  FeatureBackward<Lanes> fb;
  fb.reset();
  const Lanes x = g.px(), y = g.py();
  for (int j = group_last - 1; j >= 0; --j) {
    const LaneMask active = lanes_less(LaneInts{} + j, last);
    Lanes G, alpha;
    Vec2<Lanes> d;
    const LaneMask pass = lane_alpha(sp, j, x, y, active, G, alpha, d);
    if (!pass.any()) continue;
    const Vec4<float> co = sp.conic_opacity(j), f = sp.feature(j);
    const Vec4<Lanes> conic_opacity = {co.x, co.y, co.z, co.w}, feature = {f.x, f.y, f.z, f.w};
    SplatGrad<Lanes> lane_grad;
    // Masked as PixelBackward::step_if: a lane that does not pass adds 0 even where its walk
    // holds a NaN (a NaN upstream gradient, or a non-finite feature behind), which 0 x NaN would
    // carry to the splats of the lanes that pass.
    if (kWithFeatures) {
      // step_if with the feature channels' part of dL/dalpha added.
      const Lanes factor = pb.unblend_factor_if(pass, alpha);
      const Lanes maps_dalpha = pb.unblend_if(pass, alpha, factor, feature, lane_grad);
      const Lanes pass_alpha = zero_unless(pass, alpha), pass_G = zero_unless(pass, G);
      const float* values = fg.features->of(j);
      const Lanes feature_dot =
          zero_unless(pass, FeatureBackward<Lanes>::dot(values, upstream, channels));
      const Lanes dalpha =
          maps_dalpha + fb.step(pass_alpha, factor, pb.transmittance, feature_dot);
      alpha_grad_to_splat(zero_unless(pass, dalpha), pass_G, d, conic_opacity, lane_grad);
      const Lanes w = pass_alpha * pb.transmittance;  // dL/dF_j = w_j g
      Lanes* out = fg.sums.data() + size_t(j) * channels;
      for (int c = 0; c < channels; ++c) out[c] += zero_unless(pass, w * upstream[c]);
    } else {
      pb.step_if(pass, alpha, G, d, conic_opacity, feature, lane_grad);
    }
    // AbsGS's statistic, of the pixel's whole dL/dalpha (the median adds to z alone, below).
    if (abs_sums) add(abs_sums[j], abs_each(lane_grad.mean2d));
    if (kWithMedian) {
      // The median's gradient goes to the z of its splat alone.
      const LaneMask median_splat = pass & lanes_equal(median_position, LaneInts{} + (j + 1));
      lane_grad.feature.w += zero_unless(median_splat, median_grad);
    }
    add(sums[j], lane_grad);
  }
}

}  // namespace

template <typename T>
void preprocess(const Camera<T>& cam, const GaussianInputs<T>& in, const GaussianState<T>& state) {
#pragma omp parallel for schedule(static) if (in.count >= kMinParallelItems) \
    num_threads(loop_threads())
  for (int i = 0; i < in.count; ++i) state.store(i, preprocess_gaussian(cam, in, i));
}

// Sorts `ids` by `keys`, stably: a least-significant-digit radix sort in three passes of 11 bits
// (2,048 counters, in L1), passes where every key has the same digit skipped. For garden 112k
// it takes about a quarter of std::sort's time over (key, index) pairs.
void radix_sort_by_key(std::vector<uint32_t>& keys, std::vector<int>& ids) {
  constexpr int kDigitBits = 11, kBuckets = 1 << kDigitBits;
  const size_t n = keys.size();
  std::vector<uint32_t> keys_out(n);
  std::vector<int> ids_out(n);
  std::vector<size_t> start(kBuckets + 1);
  for (int shift = 0; shift < 32; shift += kDigitBits) {
    std::fill(start.begin(), start.end(), 0);
    for (const uint32_t key : keys) ++start[((key >> shift) & (kBuckets - 1)) + 1];
    if (std::find(start.begin(), start.end(), n) != start.end()) continue;  // one digit
    for (int b = 0; b < kBuckets; ++b) start[b + 1] += start[b];
    for (size_t k = 0; k < n; ++k) {
      const size_t at = start[(keys[k] >> shift) & (kBuckets - 1)]++;
      keys_out[at] = keys[k];
      ids_out[at] = ids[k];
    }
    keys.swap(keys_out);
    ids.swap(ids_out);
  }
}

// The Gaussians that survived the preprocess, in ascending depth with ties by index: appending
// them in this order to their tiles' lists leaves every list sorted, with no per-tile sort.
template <typename T>
std::vector<int> depth_order(const Camera<T>& cam, int count, const GaussianState<T>& state) {
  std::vector<int> ids;
  ids.reserve(static_cast<size_t>(count));
  for (int i = 0; i < count; ++i)
    if (state.radii[i] != 0) ids.push_back(i);
  const Vec4<T>* f = state.features;
  if constexpr (std::is_same<T, float>::value) {
    // The ids are in index order: a stable sort by depth keeps it among equal depths.
    std::vector<uint32_t> keys(ids.size());
    for (size_t k = 0; k < ids.size(); ++k)
      keys[k] = depth_sort_key(f[ids[k]].w, cam.inverse_depth);
    radix_sort_by_key(keys, ids);
  } else {
    // Larger 1/z is nearer (inverse_depth).
    const T sign = cam.inverse_depth ? T(-1) : T(1);
    std::sort(ids.begin(), ids.end(), [f, sign](int a, int b) {
      return sign * f[a].w < sign * f[b].w || (f[a].w == f[b].w && a < b);
    });
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
  for (const int i : depth_order(cam, count, state)) {
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

// splat_alpha of splat `id` at pixel (x, y) on the per-pixel loops, the power bound first:
// false where the splat is not blended there.
template <typename T>
bool pixel_alpha(const GaussianState<T>& state, const T* floors, int id, T x, T y, T& alpha,
                 T& G, Vec2<T>& d) {
  if (below_power_floor(state, floors, id, x, y)) return false;
  return splat_alpha(state.means2d[id], state.conic_opacity[id], x, y, alpha, G, d);
}

// Calls run(with_features, with_median) with both as compile-time constants
// (std::integral_constant<bool, ...>), so each combination is its own specialization.
template <typename Run>
void dispatch_optional(bool with_features, bool with_median, Run&& run) {
  using Yes = std::true_type;
  using No = std::false_type;
  if (with_features)
    with_median ? run(Yes{}, Yes{}) : run(Yes{}, No{});
  else
    with_median ? run(No{}, Yes{}) : run(No{}, No{});
}

// The per-pixel render in the shared math's scalar form: float64 (gradcheck) and the optional
// outputs, specialized at compile time on them so that the plain call runs the same code as
// without them.
template <bool kWithFeatures, bool kWithMedian, typename T>
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
    std::vector<T> feature_sum(kWithFeatures ? channels : 0);
    for (int y = tp.y0; y < tp.y1; ++y) {
      for (int x = tp.x0; x < tp.x1; ++x) {
        const Vec2<T> at = cam.sample_point(x, y);
        PixelAccum<T> acc;
        acc.reset();
        MedianDepth<T> median;
        if (kWithMedian) median.reset();
        if (kWithFeatures) std::fill(feature_sum.begin(), feature_sum.end(), T(0));
        int n_contrib = 0;
        for (int k = begin; k < end; ++k) {
          const int id = lists.point_list[k];
          T alpha, G;
          Vec2<T> d;
          if (!pixel_alpha(state, floors.data(), id, at.x, at.y, alpha, G, d)) continue;
          const T before = acc.transmittance;
          if (!acc.blend(alpha, state.features[id])) break;
          n_contrib = k - begin + 1;
          if (kWithFeatures)
            blend_features(feature_sum.data(), extra.features + size_t(id) * channels, channels,
                           alpha * before);
          if (kWithMedian) median.update(before, acc.transmittance, state.features[id].w, n_contrib);
        }
        const int p = y * cam.width + x;
        acc.store(px, p, plane, cam.background, n_contrib);
        if (kWithFeatures)
          for (int c = 0; c < channels; ++c) extra.feature_map[size_t(c) * plane + p] = feature_sum[c];
        if (kWithMedian) {
          extra.median[p] = median.depth;
          extra.median_contrib[p] = median.position;
        }
      }
    }
  }
}

template <bool kWithFeatures, bool kWithMedian, typename T>
void render_pixels_backward(const Camera<T>& cam, const GaussianState<T>& state, TileLists lists,
                            const PixelBuffers<T>& px, PixelGrads<T> grads,
                            const OptionalGrads<T>& extra, int count,
                            SplatGrad<T>* splat_grads) {
  const int tiles = cam.tiles_x * cam.tiles_y;
  const int plane = cam.width * cam.height;
  const bool parallel = plane >= kMinParallelItems;
  const int threads = parallel ? thread_count() : 1;
  const int channels = kWithFeatures ? extra.channels : 0;
  const std::vector<T> floors = power_floors(state, count);
  // Per-thread accumulators in double: a Gaussian's gradient sums thousands of pixel terms, and
  // float32 running sums would lose digits the CUDA backend's tests compare against.
  std::vector<SplatGrad<double>> sums(size_t(threads) * count);
  std::memset(static_cast<void*>(sums.data()), 0, sums.size() * sizeof(SplatGrad<double>));
  std::vector<double> feature_sums(size_t(threads) * count * channels, 0.0);
  std::vector<Vec2<double>> abs_sums(extra.mean2d_abs ? size_t(threads) * count : 0,
                                     Vec2<double>{0.0, 0.0});
  // A static schedule keeps the summation order, and so the result, the same on every call.
#pragma omp parallel for schedule(static, 1) if (parallel)
  for (int tile = 0; tile < tiles; ++tile) {
    SplatGrad<double>* acc = sums.data() + size_t(thread_id()) * count;
    double* feature_acc = feature_sums.data() + size_t(thread_id()) * count * channels;
    Vec2<double>* abs_acc =
        abs_sums.empty() ? nullptr : abs_sums.data() + size_t(thread_id()) * count;
    std::vector<T> upstream(channels);
    const TilePixels tp = tile_pixels(cam, tile);
    const int begin = lists.tile_ranges[2 * tile];
    for (int y = tp.y0; y < tp.y1; ++y) {
      for (int x = tp.x0; x < tp.x1; ++x) {
        const int p = y * cam.width + x;
        const int last = px.n_contrib[p];
        if (last == 0) continue;
        const Vec2<T> at = cam.sample_point(x, y);
        PixelBackward<T> pb;
        pb.init(px, grads, p, plane, cam.background);
        FeatureBackward<T> fb;
        if (kWithFeatures) {
          fb.reset();
          for (int c = 0; c < channels; ++c) upstream[c] = extra.feature_map[size_t(c) * plane + p];
        }
        const int median_position = kWithMedian ? extra.median_contrib[p] : 0;
        for (int k = begin + last - 1; k >= begin; --k) {
          const int id = lists.point_list[k];
          T alpha, G;
          Vec2<T> d;
          if (!pixel_alpha(state, floors.data(), id, at.x, at.y, alpha, G, d)) continue;
          SplatGrad<T> g;
          if (kWithFeatures) {
            const T factor = unblend_factor(alpha);
            const T maps_dalpha = pb.unblend(alpha, factor, state.features[id], g);
            const T* feature = extra.features + size_t(id) * channels;
            const T dalpha = maps_dalpha + fb.step(alpha, factor, pb.transmittance, feature,
                                                   upstream.data(), channels);
            alpha_grad_to_splat(dalpha, G, d, state.conic_opacity[id], g);
            const T w = alpha * pb.transmittance;
            double* out = feature_acc + size_t(id) * channels;
            for (int c = 0; c < channels; ++c) out[c] += w * upstream[c];
          } else {
            pb.step(alpha, G, d, state.conic_opacity[id], state.features[id], g);
          }
          if (abs_acc) add(abs_acc[id], abs_each(g.mean2d));  // of the whole dL/dalpha
          if (kWithMedian && k - begin + 1 == median_position) g.feature.w += extra.median[p];
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
    if (extra.mean2d_abs) {
      Vec2<double> total = abs_sums[i];
      for (int t = 1; t < threads; ++t) add(total, abs_sums[size_t(t) * count + i]);
      extra.mean2d_abs[i] = {T(total.x), T(total.y)};
    }
  }
  to_splat_grads(sums.data(), count, splat_grads);
}

#if defined(DGRD_AVX2_LANES) && defined(_MSC_VER)
// AVX2 in the CPU, and the upper halves of its registers saved by the OS (XCR0's SSE and AVX
// bits): what MSVC's lanes, AVX2 alone, need to run.
bool cpu_has_avx2() {
  int info[4];
  __cpuid(info, 0);
  if (info[0] < 7) return false;
  __cpuid(info, 1);
  const int osxsave = 1 << 27, avx = 1 << 28;
  if ((info[2] & (osxsave | avx)) != (osxsave | avx)) return false;
  if ((_xgetbv(0) & 6) != 6) return false;
  __cpuidex(info, 7, 0);
  return (info[1] & (1 << 5)) != 0;  // EBX bit 5: AVX2
}
#endif

// Whether the eight lanes beat the per-pixel loop here: everywhere but on an x86 CPU without
// AVX2, where GCC's loader would pick the SSE2 clone of the lane loops, written for AVX and
// 1.4x slower than the per-pixel loop there (garden 112k forward, 1 thread: 0.44 against
// 0.32 s), and where MSVC's lanes cannot run at all.
bool lanes_pay() {
#if defined(DGRD_LANE_CLONED)
  return __builtin_cpu_supports("avx2");
#else
  return lanes_run_here();
#endif
}

}  // namespace

bool lanes_run_here() {
#if defined(DGRD_AVX2_LANES) && defined(_MSC_VER)
  static const bool avx2 = cpu_has_avx2();
  return avx2;
#else
  return true;
#endif
}

CpuTuning& cpu_tuning() {
  static CpuTuning tuning = [] {
    CpuTuning t;
    t.lanes = lanes_pay();
    return t;
  }();
  return tuning;
}

// Whether the float loops run on the eight lanes.
bool lanes_on() { return cpu_tuning().lanes && lanes_run_here(); }

namespace {

// The float render on eight lanes, with the optional outputs asked for.
template <bool kWithFeatures, bool kWithMedian>
void render_lanes(const Camera<float>& cam, const GaussianState<float>& state, int count,
                  TileLists lists, const PixelBuffers<float>& px,
                  const OptionalOutputs<float>& extra) {
  const std::vector<float> floors = power_floors(state, count);
  const int tiles = cam.tiles_x * cam.tiles_y;
  [[maybe_unused]] const int plane = cam.width * cam.height;
#pragma omp parallel if (plane >= kMinParallelItems) num_threads(loop_threads())
  {
    StagedSplats sp;
    StagedFeatures features;
    std::vector<Lanes> feature_sum(size_t(kWithFeatures ? extra.channels : 0));
#pragma omp for schedule(dynamic, 1)
    for (int tile = 0; tile < tiles; ++tile) {
      const TilePixels tp = tile_pixels(cam, tile);
      const int begin = lists.tile_ranges[2 * tile], n = lists.tile_ranges[2 * tile + 1] - begin;
      sp.stage(state, floors.data(), lists.point_list + begin, n);
      if (kWithFeatures) features.stage(extra.features, extra.channels, lists.point_list + begin, n);
      for (int y = tp.y0; y < tp.y1; ++y)
        for (int x = tp.x0; x < tp.x1; x += kLanes)
          render_group<kWithFeatures, kWithMedian>(cam, sp, n, lane_group(cam, x, y, tp.x1),
                                                   px, features, extra, feature_sum.data());
    }
  }
}

// The pair sums of a wave of consecutive tiles: at most this many doubles (4 MiB) at once. Held
// for a whole call they were 96 B a pair (52 MB for garden 112k at 648x420), memory mapped
// afresh each call, whose page faults and cache misses cost the plain render backward about
// 10% of its time (doc/performance.md); waves of 16 MiB were slower again.
constexpr int64_t kWaveValues = int64_t(1) << 19;

// Half `part` (of 2) of a pair's splat gradient added into a Gaussian's total: the reduction
// splits the values between threads.
void add_half(SplatGrad<double>& total, const SplatGrad<double>& pair, int part) {
  if (part == 0) {
    total.mean2d.x += pair.mean2d.x;
    total.mean2d.y += pair.mean2d.y;
    total.conic.a += pair.conic.a;
    total.conic.b += pair.conic.b;
    total.conic.c += pair.conic.c;
  } else {
    total.opacity += pair.opacity;
    total.feature.x += pair.feature.x;
    total.feature.y += pair.feature.y;
    total.feature.z += pair.feature.z;
    total.feature.w += pair.feature.w;
  }
}

template <bool kWithFeatures, bool kWithMedian>
void render_backward_lanes(const Camera<float>& cam, const GaussianState<float>& state,
                           TileLists lists, const PixelBuffers<float>& px,
                           const PixelGrads<float>& grads, const OptionalGrads<float>& extra,
                           int count, SplatGrad<float>* splat_grads) {
  const std::vector<float> floors = power_floors(state, count);
  const int tiles = cam.tiles_x * cam.tiles_y;
  [[maybe_unused]] const int plane = cam.width * cam.height;
  const int* ranges = lists.tile_ranges;
  const int channels = kWithFeatures ? extra.channels : 0;
  const int64_t pair_values = kSplatGradValues + channels;
  std::vector<int> visited(size_t(tiles), 0);  // splats of each tile a pixel reached
  // Each (tile, splat) pair gets its own sum, so a tile's result does not depend on which
  // thread ran it: scheduling is free to be dynamic. The pairs are added into their Gaussians
  // in list order, wave after wave (consecutive tiles under kWaveValues), each thread a share of
  // the values: a fixed order, so the same result on any number of threads.
  std::vector<SplatGrad<double>> totals(static_cast<size_t>(count));
  std::memset(static_cast<void*>(totals.data()), 0, totals.size() * sizeof(SplatGrad<double>));
  if (kWithFeatures) {  // feature gradients add up in the output (no P x C doubles to map)
#pragma omp parallel for schedule(static) if (count >= kMinParallelItems) \
    num_threads(loop_threads())
    for (int i = 0; i < count; ++i)
      std::fill_n(extra.features_grad + size_t(i) * channels, channels, 0.f);
  }
  const int reduction_parts = 2 + (channels + 7) / 8;  // splat halves, eights of channels
  std::vector<SplatGrad<double>> pair_sums;           // the wave's
  std::vector<double> feature_sums;                   // the wave's, C a pair
  const bool absolute = extra.mean2d_abs != nullptr;  // AbsGS's statistic, summed as the others
  std::vector<Vec2<double>> abs_totals(absolute ? size_t(count) : 0, Vec2<double>{0.0, 0.0});
  std::vector<Vec2<double>> abs_pair_sums;            // the wave's
  for (int wave_begin = 0; wave_begin < tiles;) {
    int wave_end = wave_begin + 1;
    while (wave_end < tiles &&
           int64_t(ranges[2 * wave_end + 1] - ranges[2 * wave_begin]) * pair_values <= kWaveValues)
      ++wave_end;
    const int first_pair = ranges[2 * wave_begin];
    const size_t wave_pairs = size_t(ranges[2 * wave_end - 1] - first_pair);
    pair_sums.resize(wave_pairs);
    feature_sums.resize(wave_pairs * channels);
    abs_pair_sums.resize(absolute ? wave_pairs : 0);
#pragma omp parallel if (plane >= kMinParallelItems) num_threads(loop_threads())
    {
      StagedSplats sp;
      StagedFeatures features;
      LaneFeatureGrads fg;
      fg.features = &features;
      fg.upstream.resize(size_t(channels));
      std::vector<SplatGrad<Lanes>> lane_sums;  // the tile's splats, summed per lane
      std::vector<Vec2<Lanes>> lane_abs;         // with `absolute`
#pragma omp for schedule(dynamic, 1)
      for (int tile = wave_begin; tile < wave_end; ++tile) {
        const TilePixels tp = tile_pixels(cam, tile);
        const int begin = ranges[2 * tile];
        int n = 0;
        for (int y = tp.y0; y < tp.y1; ++y)
          for (int x = tp.x0; x < tp.x1; ++x) n = std::max(n, px.n_contrib[y * cam.width + x]);
        visited[tile] = n;
        if (n == 0) continue;
        sp.stage(state, floors.data(), lists.point_list + begin, n);
        lane_sums.assign(size_t(n), SplatGrad<Lanes>{});
        if (absolute) lane_abs.assign(size_t(n), Vec2<Lanes>{});
        if (kWithFeatures) {
          features.stage(extra.features, channels, lists.point_list + begin, n);
          fg.sums.assign(size_t(n) * channels, Lanes(0.f));
        }
        for (int y = tp.y0; y < tp.y1; ++y)
          for (int x = tp.x0; x < tp.x1; x += kLanes)
            render_backward_group<kWithFeatures, kWithMedian>(
                cam, sp, lane_group(cam, x, y, tp.x1), px, grads, extra,
                lane_sums.data(), absolute ? lane_abs.data() : nullptr, fg);
        SplatGrad<double>* pair_out = pair_sums.data() + (begin - first_pair);
        for (int j = 0; j < n; ++j) pair_out[j] = lane_total(lane_sums[j]);
        for (int j = 0; absolute && j < n; ++j)
          abs_pair_sums[size_t(begin - first_pair + j)] = {lane_sum(lane_abs[j].x),
                                                           lane_sum(lane_abs[j].y)};
        if (kWithFeatures) {
          double* feature_out = feature_sums.data() + size_t(begin - first_pair) * channels;
          for (int j = 0; j < n; ++j) {
            const Lanes* sums = fg.sums.data() + size_t(j) * channels;
            double* out = feature_out + size_t(j) * channels;
            int c = 0;
            for (; c + kLanes <= channels; c += kLanes) lane_sums8(sums + c, out + c);
            for (; c < channels; ++c) out[c] = lane_sum(sums[c]);
          }
        }
      }
#pragma omp for schedule(static)
      for (int part = 0; part < reduction_parts; ++part) {
        for (int tile = wave_begin; tile < wave_end; ++tile) {
          const int begin = ranges[2 * tile];
          const int* ids = lists.point_list + begin;
          const size_t at = size_t(begin - first_pair);
          if (part < 2) {
            for (int j = 0; j < visited[tile]; ++j)
              add_half(totals[ids[j]], pair_sums[at + j], part);
            for (int j = 0; absolute && part == 1 && j < visited[tile]; ++j)
              add(abs_totals[ids[j]], abs_pair_sums[at + j]);
            continue;
          }
          const int c0 = (part - 2) * 8, c1 = std::min(channels, c0 + 8);
          for (int j = 0; j < visited[tile]; ++j) {
            float* total = extra.features_grad + size_t(ids[j]) * channels;
            const double* sum = feature_sums.data() + (at + j) * channels;
            for (int c = c0; c < c1; ++c) total[c] = float(total[c] + sum[c]);
          }
        }
      }
    }
    wave_begin = wave_end;
  }
  to_splat_grads(totals.data(), count, splat_grads);
  for (int i = 0; absolute && i < count; ++i)
    extra.mean2d_abs[i] = {float(abs_totals[i].x), float(abs_totals[i].y)};
}

}  // namespace

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
          const Vec2<float> at = cam.sample_point(x, y);
          PixelAccum<float> acc;
          acc.reset();
          int k = begin;
          for (; k < end; ++k) {
            const int id = lists.point_list[k];
            ++evaluations;
            const Vec2<float> d = {state.means2d[id].x - at.x, state.means2d[id].y - at.y};
            const float power = splat_power(state.conic_opacity[id], d);
            if (power <= 0.f && power >= floors[id]) ++exps;
            float alpha, G;
            Vec2<float> d2;
            if (!splat_alpha(state.means2d[id], state.conic_opacity[id], at.x, at.y, alpha, G,
                             d2))
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

// Float takes the eight-lane path, float64 (gradcheck) the per-pixel loop; both are specialized
// at compile time on the optional outputs asked for.
template <typename T>
void render(const Camera<T>& cam, const GaussianState<T>& state, int count, TileLists lists,
            const PixelBuffers<T>& px, const OptionalOutputs<T>& extra) {
  auto run = [&](auto with_features, auto with_median) {
    constexpr bool kF = decltype(with_features)::value, kM = decltype(with_median)::value;
    if constexpr (std::is_same<T, float>::value) {
      if (lanes_on())
        return render_lanes<kF, kM>(cam, state, count, lists, px, extra);
    }
    render_pixels<kF, kM>(cam, state, count, lists, px, extra);
  };
  dispatch_optional(extra.has_features(), extra.has_median(), run);
}

template <typename T>
void render_backward(const Camera<T>& cam, const GaussianState<T>& state, TileLists lists,
                     const PixelBuffers<T>& px, PixelGrads<T> grads,
                     const OptionalGrads<T>& extra, int count, SplatGrad<T>* splat_grads) {
  auto run = [&](auto with_features, auto with_median) {
    constexpr bool kF = decltype(with_features)::value, kM = decltype(with_median)::value;
    if constexpr (std::is_same<T, float>::value) {
      if (lanes_on())
        return render_backward_lanes<kF, kM>(cam, state, lists, px, grads, extra, count,
                                             splat_grads);
    }
    render_pixels_backward<kF, kM>(cam, state, lists, px, grads, extra, count, splat_grads);
  };
  dispatch_optional(extra.has_features(), extra.has_median(), run);
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
  for (int k = 0; k < 2; ++k) camera->tanfov[k] = T(total.tanfov[k]);
  for (int k = 0; k < kLensCoefficients; ++k) camera->distortion[k] = T(total.distortion[k]);
}

// Each pixel walks its tile's list as the render does (the power bound first; float on the
// render's eight lanes where they run), up to its first blended splat that does not touch it. A
// tile counts its splats' touches by list position, then adds them to their Gaussians, one
// atomic per splat and tile (integers: the same sums in any order of the threads).
template <typename T>
void count_touches(const Camera<T>& cam, const GaussianState<T>& state, int count,
                   TileLists lists, int* touch_count) {
  const std::vector<T> floors = power_floors(state, count);
  const int tiles = cam.tiles_x * cam.tiles_y;
  bool lanes = false;
  if constexpr (std::is_same<T, float>::value) lanes = lanes_on();
#pragma omp parallel if (cam.width * cam.height >= kMinParallelItems) num_threads(loop_threads())
  {
    StagedSplats sp;
    std::vector<int> by_position;
#pragma omp for schedule(dynamic, 1)
    for (int tile = 0; tile < tiles; ++tile) {
      const TilePixels tp = tile_pixels(cam, tile);
      const int begin = lists.tile_ranges[2 * tile], n = lists.tile_ranges[2 * tile + 1] - begin;
      by_position.assign(size_t(n), 0);
      if constexpr (std::is_same<T, float>::value) {
        if (lanes) {
          sp.stage(state, floors.data(), lists.point_list + begin, n);
          for (int y = tp.y0; y < tp.y1; ++y)
            for (int x = tp.x0; x < tp.x1; x += kLanes)
              count_group_touches(sp, n, lane_group(cam, x, y, tp.x1), by_position.data());
        }
      }
      for (int y = tp.y0; !lanes && y < tp.y1; ++y)
        for (int x = tp.x0; x < tp.x1; ++x) {
          const Vec2<T> at = cam.sample_point(x, y);
          T transmittance = T(1);
          for (int j = 0; j < n; ++j) {
            const int row = lists.point_list[begin + j];
            T alpha, G;
            Vec2<T> d;
            if (!pixel_alpha(state, floors.data(), row, at.x, at.y, alpha, G, d)) continue;
            const T after = transmittance * (T(1) - alpha);
            if (!touches(after)) break;
            transmittance = after;
            ++by_position[size_t(j)];
          }
        }
      for (int j = 0; j < n; ++j) {
        if (by_position[size_t(j)] == 0) continue;
        int& total = touch_count[lists.gaussian(lists.point_list[begin + j])];
#pragma omp atomic
        total += by_position[size_t(j)];
      }
    }
  }
}

// Each pixel walks its tile's list as the render does (the power bound first; float on the
// render's eight lanes where they run), blending up to its first splat that would saturate it;
// a tile tallies its splats by list position, and the tallies are added into their Gaussians in
// list order once every tile is done.
template <typename T>
void gaussian_contributions(const Camera<T>& cam, const GaussianState<T>& state, int count,
                            TileLists lists, int64_t pairs, T* contribution, int* dominant_map) {
  const std::vector<T> floors = power_floors(state, count);
  const int tiles = cam.tiles_x * cam.tiles_y;
  bool lanes = false;
  if constexpr (std::is_same<T, float>::value) lanes = lanes_on();
  std::vector<PairContribution> tally(static_cast<size_t>(pairs),
                                      PairContribution{0, 0, 0, 0, 0});
#pragma omp parallel if (cam.width * cam.height >= kMinParallelItems) num_threads(loop_threads())
  {
    StagedSplats sp;
#pragma omp for schedule(dynamic, 1)
    for (int tile = 0; tile < tiles; ++tile) {
      const TilePixels tp = tile_pixels(cam, tile);
      const int begin = lists.tile_ranges[2 * tile], n = lists.tile_ranges[2 * tile + 1] - begin;
      PairContribution* by_position = tally.data() + begin;
      if constexpr (std::is_same<T, float>::value) {
        if (lanes) {
          sp.stage(state, floors.data(), lists.point_list + begin, n);
          for (int y = tp.y0; y < tp.y1; ++y)
            for (int x = tp.x0; x < tp.x1; x += kLanes)
              tally_group_contributions(sp, n, lane_group(cam, x, y, tp.x1), by_position,
                                        dominant_map + int64_t(y) * cam.width + x);
        }
      }
      for (int y = tp.y0; !lanes && y < tp.y1; ++y)
        for (int x = tp.x0; x < tp.x1; ++x) {
          const Vec2<T> at = cam.sample_point(x, y);
          T transmittance = T(1);
          DominantSplat<T, int> dominant;  // its list position
          for (int j = 0; j < n; ++j) {
            const int row = lists.point_list[begin + j];
            T alpha, G;
            Vec2<T> d;
            if (!pixel_alpha(state, floors.data(), row, at.x, at.y, alpha, G, d)) continue;
            const T after = transmittance * (T(1) - alpha);
            if (after < T(kTransmittanceMin)) break;  // saturated: PixelAccum::blend's test
            const T w = alpha * transmittance;         // as PixelAccum::accumulate weighs it
            by_position[j].add(double(w), double(state.conic_opacity[row].w) *
                                              double(transmittance));
            dominant.update(w, j);
            transmittance = after;
          }
          if (dominant.found()) ++by_position[dominant.id].dominated;
          dominant_map[int64_t(y) * cam.width + x] = dominant.found() ? dominant.id : -1;
        }
      // The tile's pixels hold list positions so far: their Gaussians.
      for (int y = tp.y0; y < tp.y1; ++y)
        for (int x = tp.x0; x < tp.x1; ++x) {
          int& d = dominant_map[int64_t(y) * cam.width + x];
          if (d >= 0) d = lists.gaussian(lists.point_list[begin + d]);
        }
    }
  }
  std::vector<PairContribution> totals(static_cast<size_t>(count),
                                       PairContribution{0, 0, 0, 0, 0});
  for (int64_t k = 0; k < pairs; ++k) {
    const PairContribution& pair = tally[size_t(k)];
    if (pair.pixels == 0) continue;
    PairContribution& total = totals[size_t(lists.gaussian(lists.point_list[k]))];
    total.weight_sum += pair.weight_sum;
    total.weight_max = std::max(total.weight_max, pair.weight_max);
    total.pixels += pair.pixels;
    total.dominated += pair.dominated;
    total.opacity_transmittance += pair.opacity_transmittance;
  }
  for (int i = 0; i < count; ++i) {
    const PairContribution& total = totals[size_t(i)];
    T* out = contribution + int64_t(i) * kContributionValues;
    out[0] = T(total.weight_sum);
    out[1] = T(total.weight_max);
    out[2] = T(total.pixels);
    out[3] = T(total.dominated);
    out[4] = T(total.opacity_transmittance);
  }
}

// The opacity field's three loops: the points' rows and tiles, the Gaussians' ray quadrics, then
// every tile's points walk its list (one thread a tile; a point's walk is its own: the same
// result on any number of threads).
template <typename T>
void project_points(const Camera<T>& cam, const T* points, int count, PointOnScreen<T>* rows,
                    int* keys, T* opacity) {
  const int unseen = cam.tiles_x * cam.tiles_y;
#pragma omp parallel for schedule(static) if (count >= kMinParallelItems) \
    num_threads(loop_threads())
  for (int i = 0; i < count; ++i) {
    int tile = 0;
    rows[i] = {};
    const bool seen = project_point(cam, load3(points, i), rows[i], tile);
    keys[i] = seen ? tile : unseen;
    if (!seen) opacity[i] = T(1);
  }
}

template <typename T>
void ray_quadrics(const Camera<T>& cam, const GaussianInputs<T>& in, RayQuadric<T>* quadrics) {
#pragma omp parallel for schedule(static) if (in.count >= kMinParallelItems) \
    num_threads(loop_threads())
  for (int i = 0; i < in.count; ++i) quadrics[i] = ray_quadric(cam, in, i);
}

template <typename T>
void point_opacity(const Camera<T>& cam, const GaussianState<T>& state, int count,
                   TileLists lists, const RayQuadric<T>* quadrics,
                   const PointOnScreen<T>* points, const int* order, const int* point_ranges,
                   T* opacity) {
  const std::vector<T> floors = power_floors(state, count);
  const int tiles = cam.tiles_x * cam.tiles_y;
#pragma omp parallel for schedule(dynamic, 1) if (point_ranges[tiles] >= kMinParallelItems) \
    num_threads(loop_threads())
  for (int tile = 0; tile < tiles; ++tile) {
    const int begin = lists.tile_ranges[2 * tile], end = lists.tile_ranges[2 * tile + 1];
    for (int k = point_ranges[tile]; k < point_ranges[tile + 1]; ++k) {
      const PointOnScreen<T> pt = points[order[k]];
      PointTransmittance<T> transmittance;
      for (int j = begin; transmittance.walking && j < end; ++j) {
        const int row = lists.point_list[j];
        T alpha, G;
        Vec2<T> d;  // the power bound first, as the render's walk (most splats miss the point)
        if (pixel_alpha(state, floors.data(), row, pt.pixel.x, pt.pixel.y, alpha, G, d) &&
            fade_alpha(quadrics[lists.gaussian(row)], pt, alpha))
          transmittance.blend(alpha);
      }
      opacity[order[k]] = T(1) - transmittance.value;
    }
  }
}

#define DGRD_INSTANTIATE(T)                                                                     \
  template void preprocess<T>(const Camera<T>&, const GaussianInputs<T>&,                        \
                              const GaussianState<T>&);                                          \
  template void count_touches<T>(const Camera<T>&, const GaussianState<T>&, int, TileLists,     \
                                 int*);                                                          \
  template void gaussian_contributions<T>(const Camera<T>&, const GaussianState<T>&, int,       \
                                          TileLists, int64_t, T*, int*);                         \
  template void project_points<T>(const Camera<T>&, const T*, int, PointOnScreen<T>*, int*, T*); \
  template void ray_quadrics<T>(const Camera<T>&, const GaussianInputs<T>&, RayQuadric<T>*);   \
  template void point_opacity<T>(const Camera<T>&, const GaussianState<T>&, int, TileLists,     \
                                 const RayQuadric<T>*, const PointOnScreen<T>*, const int*,     \
                                 const int*, T*);                                               \
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
