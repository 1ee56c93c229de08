// PyTorch glue for the CPU backend, and the dispatch by device.
#include "rasterize_points.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/split_with_sizes.h>
#include <ATen/ops/zeros.h>

#ifdef _WIN32
#include "cuda_rasterizer/windows_headers.h"  // GlobalMemoryStatusEx
#else
#include <unistd.h>
#endif

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iomanip>
#include <map>
#include <numeric>
#include <sstream>
#include <string>

#include "cuda_rasterizer/cpu_backend.h"
#include "cuda_rasterizer/preprocess.h"

namespace dgrd {

ForwardState allocate_gaussian_state(int64_t count, const at::TensorOptions& opts,
                                     bool depth_only, bool rows) {
  ForwardState s;
  s.radii = at::empty({count}, opts.dtype(at::kInt));
  const int64_t row_count = rows ? count : 0;
  s.means2d = at::empty({row_count, 2}, opts);
  s.conic_opacity = at::empty({row_count, 4}, opts);
  s.features = at::empty({row_count, depth_only ? 1 : 4}, opts);
  s.gaussian_ids = at::empty({0}, opts.dtype(at::kInt));
  return s;
}

void allocate_tile_ranges(const RasterConfig& c, ForwardState& s,
                          const at::TensorOptions& opts) {
  s.tile_ranges = at::empty({int64_t(c.tiles_x()) * c.tiles_y(), 2}, opts.dtype(at::kInt));
}

void allocate_pixel_state(const RasterConfig& c, ForwardState& s,
                          const at::TensorOptions& opts) {
  const auto ints = opts.dtype(at::kInt);
  const int64_t H = c.image_height, W = c.image_width;
  s.pixel_state = at::empty({3, H, W}, opts);
  s.n_contrib = at::empty({H, W}, ints);
  s.median_contrib = at::empty(c.median_depth ? std::vector<int64_t>{H, W} : std::vector<int64_t>{0},
                               ints);
  s.tile_splits = at::empty({0}, ints);
  s.split_state = at::empty({0}, opts);
}

namespace {

// Zeros of a shape. On the CPU one memset on the calling thread: a parallel fill would wake the
// thread pool for a few megabytes, and on a busy machine wait for a descheduled thread.
at::Tensor fresh_zeros(c10::IntArrayRef sizes, const at::TensorOptions& opts) {
  if (!opts.device().is_cpu()) return at::zeros(sizes, opts);
  at::Tensor t = at::empty(sizes, opts);
  std::memset(t.data_ptr(), 0, t.nbytes());
  return t;
}

}  // namespace

GradientTensors GradientTensors::zeros_like_inputs(const GaussianTensors& g, bool camera_grad) {
  return like_inputs(g, camera_grad, fresh_zeros);
}

GradientTensors GradientTensors::like_inputs(const GaussianTensors& g, bool camera_grad,
                                             Allocate allocate) {
  GradientTensors d = sums_only(g, camera_grad);
  d.allocate_missing(g, allocate);
  return d;
}

GradientTensors GradientTensors::sums_only(const GaussianTensors& g, bool camera_grad) {
  GradientTensors d;
  d.features = g.features.defined() ? fresh_zeros(g.features.sizes(), g.features.options())
                                    : at::Tensor();
  d.camera = fresh_zeros({camera_grad ? kCameraGradValues : 0}, g.means3D.options());
  return d;
}

void GradientTensors::allocate_missing(const GaussianTensors& g, Allocate allocate,
                                       const std::vector<Field>& only) {
  const int64_t P = g.count();
  const auto take = [&](Field field, c10::IntArrayRef sizes, const at::TensorOptions& opts) {
    at::Tensor& d = this->*field;
    const bool wanted = only.empty() || std::find(only.begin(), only.end(), field) != only.end();
    if (wanted && !d.defined()) d = allocate(sizes, opts);
  };
  const auto take_like = [&](Field field, const at::Tensor& input) {
    if (input.defined()) take(field, input.sizes(), input.options());
  };
  const auto opts = g.means3D.options();
  take(&GradientTensors::means3D, {P, 3}, opts);
  take(&GradientTensors::means2D, {P, 3}, opts);
  take(&GradientTensors::opacities, {P, 1}, opts);
  take_like(&GradientTensors::dc, g.dc);
  take_like(&GradientTensors::shs, g.shs);
  take_like(&GradientTensors::colors_precomp, g.colors_precomp);
  take_like(&GradientTensors::scales, g.scales);
  take_like(&GradientTensors::rotations, g.rotations);
  take_like(&GradientTensors::cov3D_precomp, g.cov3D_precomp);
}

namespace {

constexpr double kGiB = double(int64_t(1) << 30);

std::string gib(double bytes) {
  std::ostringstream out;
  out << std::setprecision(3) << bytes / kGiB << " GiB";
  return out.str();
}

// The first integer after `key` on a line of a /proc-style file, or -1.
int64_t read_keyed_number(const char* path, const std::string& key) {
  std::ifstream file(path);
  std::string line;
  while (std::getline(file, line)) {
    if (line.compare(0, key.size(), key) != 0) continue;
    std::istringstream rest(line.substr(key.size()));
    int64_t value = -1;
    rest >> value;
    return rest.fail() ? -1 : value;
  }
  return -1;
}

// A file holding one integer (a cgroup limit), or -1 ("max", missing, unreadable).
int64_t read_number(const char* path) {
  std::ifstream file(path);
  int64_t value = -1;
  file >> value;
  return file.fail() ? -1 : value;
}

// Limits of 2^60 bytes and more are cgroup v1's way of saying "none".
bool is_limit(int64_t bytes) { return bytes > 0 && bytes < (int64_t(1) << 60); }

}  // namespace

int64_t host_bytes_available() {
  int64_t available = INT64_MAX;
#ifdef _WIN32
  MEMORYSTATUSEX memory;
  memory.dwLength = sizeof(memory);
  if (GlobalMemoryStatusEx(&memory))
    available = std::max(int64_t(memory.ullAvailPhys), int64_t(memory.ullTotalPhys / 2));
#else
  const int64_t available_kib = read_keyed_number("/proc/meminfo", "MemAvailable:");
  const int64_t total_kib = read_keyed_number("/proc/meminfo", "MemTotal:");
  if (available_kib >= 0 && total_kib >= 0) {
    // Half the machine is always granted: other processes' passing peaks must not turn a
    // modest render into an error. Absurd requests (more than the machine) are still refused.
    available = std::max(available_kib, total_kib / 2) * 1024;
  } else {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0) available = int64_t(pages) * page;
  }
#endif
  // A container's memory limit: compared whole (not minus its usage, which counts reclaimable
  // page cache) so that only requests that cannot possibly fit are refused.
  for (const char* path :
       {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    const int64_t limit = read_number(path);
    if (is_limit(limit)) available = std::min(available, limit);
  }
#ifdef _MSC_VER
#pragma warning(push)
#pragma warning(disable : 4996)  // getenv "unsafe": its string is read here, at once
#endif
  const char* env = std::getenv("DGRD_HOST_MEMORY_LIMIT");
#ifdef _MSC_VER
#pragma warning(pop)
#endif
  if (env) {
    char* end = nullptr;
    errno = 0;
    const long long limit = std::strtoll(env, &end, 10);
    if (end == env || *end != '\0' || errno != 0 || limit < 0)
      throw std::invalid_argument(
          std::string("DGRD_HOST_MEMORY_LIMIT: expected a number of bytes, got '") + env + "'");
    available = std::min<int64_t>(available, limit);
  }
  return available;
}

void check_tile_pairs(int64_t pairs, int64_t bytes_per_pair, int64_t bytes_available) {
  const double bytes = double(pairs) * double(bytes_per_pair);
  const bool too_many = pairs > kMaxTilePairs;
  if (!too_many && bytes <= double(bytes_available)) return;
  std::ostringstream msg;
  msg << "diff_gaussian_rasterization_depth: the scene needs " << pairs
      << " (tile, Gaussian) pairs, " << gib(bytes) << " of sort buffers at " << bytes_per_pair
      << " bytes per pair, ";
  if (too_many)
    msg << "more than the " << kMaxTilePairs << " (2^31 - 2^24 - 513) pairs a render can index";
  else
    msg << "more than the " << gib(double(bytes_available)) << " of memory available";
  msg << ". Reduce the number or the screen size of the Gaussians (large ones close to the "
         "camera touch many 16x16 tiles), or the image size.";
  throw std::runtime_error(msg.str());
}

void check_image_buffers(int64_t height, int64_t width, int64_t bytes_per_pixel,
                         int64_t bytes_available) {
  const double bytes = double(height) * double(width) * double(bytes_per_pixel);
  if (bytes <= double(bytes_available)) return;
  std::ostringstream msg;
  msg << "diff_gaussian_rasterization_depth: a " << height << " x " << width << " render needs "
      << gib(bytes) << " of per-pixel buffers (" << bytes_per_pixel << " bytes per pixel), more "
      << "than the " << gib(double(bytes_available)) << " of memory available. "
      << "Render a smaller image (or tiles of it).";
  throw std::runtime_error(msg.str());
}

namespace {

void check_pixel_grad(const char* name, const at::Tensor& t, std::vector<int64_t> shape,
                      const at::Tensor& like) {
  if (!t.defined() || t.numel() == 0) return;
  TORCH_CHECK_VALUE(t.sizes() == c10::IntArrayRef(shape), "gradient of ", name, ": expected shape ",
                    c10::IntArrayRef(shape), ", got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type() && t.device() == like.device(),
                   "gradient of ", name, ": expected ", like.scalar_type(), " on ", like.device(),
                   ", got ", t.scalar_type(), " on ", t.device());
}

}  // namespace

namespace {

// Wall time of the CPU backend's stages in the calling thread's last forward and backward, for
// the benchmarks (a few clock reads a call).
std::map<std::string, double>& stage_times() {
  static thread_local std::map<std::string, double> times;
  return times;
}

struct StageClock {
  std::chrono::steady_clock::time_point last = std::chrono::steady_clock::now();
  void lap(const char* stage) {
    const auto now = std::chrono::steady_clock::now();
    stage_times()[stage] = std::chrono::duration<double>(now - last).count();
    last = now;
  }
};

}  // namespace

std::map<std::string, double> cpu_stage_seconds() { return stage_times(); }

void set_cpu_tuning(bool lanes, bool power_bound) {
  cpu::cpu_tuning() = {lanes, power_bound};
}

ForwardResult forward_cpu(const RasterConfig& c, const GaussianTensors& g) {
  const int64_t P = g.count(), H = c.image_height, W = c.image_width;
  const auto opts = g.means3D.options();
  const int64_t value_bytes = int64_t(g.means3D.element_size());
  // Only P-sized memory is allocated until the pair count and the image are known to fit, so an
  // impossible scene is refused before it can start a giant allocation.
  ForwardState s = allocate_gaussian_state(P, opts);
  at::Tensor color, depth, weight, feature_map, median;
  AT_DISPATCH_FLOATING_TYPES(g.means3D.scalar_type(), "dgrd_forward_cpu", [&] {
    using T = scalar_t;
    const Camera<T> cam = make_camera<T>(c);
    std::vector<int64_t> tiles_touched(size_t(P), 0);
    std::vector<TileRect> rects(static_cast<size_t>(P));
    const GaussianState<T> st = make_state<T>(s, tiles_touched.data(), rects.data());
    StageClock clock;
    cpu::preprocess(cam, make_inputs<T>(g), st);
    clock.lap("preprocess");
    const int64_t pairs = std::accumulate(tiles_touched.begin(), tiles_touched.end(), int64_t(0));
    const int64_t pair_bytes = int64_t(sizeof(int32_t));  // point_list
    const int64_t available = host_bytes_available();
    check_tile_pairs(pairs, pair_bytes, available);
    // colour (3), depth, weight and the saved pixel state (3) in T, n_contrib in int32.
    const int64_t pixel_bytes =
        8 * value_bytes + int64_t(sizeof(int32_t)) + optional_pixel_bytes(c, g, value_bytes);
    check_image_buffers(H, W, pixel_bytes, available - pairs * pair_bytes);
    color = at::empty({3, H, W}, opts);
    depth = at::empty({H, W}, opts);
    weight = at::empty({H, W}, opts);
    feature_map = at::empty({g.channels(), H, W}, opts);
    median = at::empty({c.median_depth ? H : 0, W}, opts);
    allocate_tile_ranges(c, s, opts);
    allocate_pixel_state(c, s, opts);
    s.point_list = at::empty({pairs}, opts.dtype(at::kInt));
    cpu::bin_gaussians(cam, int(P), st, s.point_list.data_ptr<int>(), s.tile_ranges.data_ptr<int>());
    clock.lap("bin");
    const TileLists lists = s.lists();
    cpu::render(cam, st, int(P), lists, make_pixel_buffers<T>(s, color, depth, weight),
                make_optional_outputs<T>(g, s, feature_map, median));
    clock.lap("render");
  });
  return {color, depth, weight, s.radii.clone(), feature_map, median, s.to_list()};
}

at::Tensor absolute_grad_sums(const RasterConfig& c, const GaussianTensors& g) {
  return c.absolute_grad ? fresh_zeros({g.count(), 2}, g.means3D.options())
                         : at::empty({0}, g.means3D.options());
}

void append_absolute_grad(const RasterConfig& c, const at::Tensor& sums, GradientTensors& d) {
  if (!c.absolute_grad) return;
  // g * 0.5 * size in the preprocess backward: 0.5 * size is exact, so one product rounds alike.
  // Scalars, not a tensor of the two scales: no copy to the device (and no wait for it).
  d.means2D = at::cat({d.means2D.narrow(1, 0, 2),
                       sums.narrow(1, 0, 1).mul(0.5 * double(c.image_width)),
                       sums.narrow(1, 1, 1).mul(0.5 * double(c.image_height))},
                      1);
}

BackwardResult backward_cpu(const RasterConfig& c, const GaussianTensors& g, const ForwardState& s,
                            const MapGrads& up) {
  const int64_t P = g.count();
  GradientTensors grads = GradientTensors::zeros_like_inputs(g, c.camera_grad);
  const at::Tensor abs_sums = absolute_grad_sums(c, g);
  AT_DISPATCH_FLOATING_TYPES(g.means3D.scalar_type(), "dgrd_backward_cpu", [&] {
    using T = scalar_t;
    const Camera<T> cam = make_camera<T>(c);
    const GaussianState<T> st = make_state<T>(s, nullptr, nullptr);
    const TileLists lists = s.lists();
    const PixelGrads<T> pg = {data_or_null<T>(up.color), data_or_null<T>(up.depth),
                              data_or_null<T>(up.weight)};
    StageClock clock;
    std::vector<SplatGrad<T>> splat(size_t(P), SplatGrad<T>{});
    OptionalGrads<T> extra = make_optional_grads<T>(g, s, up, grads);
    extra.mean2d_abs = reinterpret_cast<Vec2<T>*>(output_or_null<T>(abs_sums));
    cpu::render_backward(cam, st, lists, make_pixel_buffers<T>(s, {}, {}, {}), pg, extra, int(P),
                         splat.data());
    clock.lap("render_backward");
    cpu::preprocess_backward(cam, make_inputs<T>(g), st.radii, splat.data(), grads.pointers<T>(),
                             grads.camera_pointer<T>());
    clock.lap("preprocess_backward");
  });
  append_absolute_grad(c, abs_sums, grads);
  return grads.to_list();
}

std::vector<int64_t> cpu_render_work(const RasterConfig& c, const std::vector<at::Tensor>& state) {
  const ForwardState s = ForwardState::from_list(state);
  TORCH_CHECK(s.means2d.device().is_cpu() && s.means2d.scalar_type() == at::kFloat,
              "cpu_render_work: the state of a float32 CPU forward");
  const cpu::RenderWork w = cpu::count_render_work(
      make_camera<float>(c), make_state<float>(s, nullptr, nullptr), int(s.radii.size(0)),
      s.lists());
  return {w.pairs, w.evaluations, w.exps, w.blends, w.lane_evaluations};
}

#ifndef DGRD_WITH_CUDA
namespace {
// What a CUDA call answers in a build without the CUDA backend.
[[noreturn]] void refuse_without_cuda() {
  TORCH_CHECK(false, "diff_gaussian_rasterization_depth was built without CUDA");
  std::abort();  // not reached: TORCH_CHECK throws
}
}  // namespace
#endif

ForwardResult forward(const RasterConfig& c, const GaussianTensors& g) {
  if (g.means3D.is_cuda()) {
#ifdef DGRD_WITH_CUDA
    return forward_cuda(c, g);
#else
    refuse_without_cuda();
#endif
  }
  return forward_cpu(c, g);
}

BackwardResult backward(const RasterConfig& c, const GaussianTensors& g, ForwardState s,
                        bool release_state, const UpstreamGrad& dcolor_in,
                        const UpstreamGrad& ddepth_in, const UpstreamGrad& dweight_in,
                        const UpstreamGrad& dfeature_map_in, const UpstreamGrad& dmedian_in) {
  const at::Tensor absent = at::empty({0}, g.means3D.options());
  const at::Tensor dcolor = contiguous_or(dcolor_in, absent),
                      ddepth = contiguous_or(ddepth_in, absent),
                      dweight = contiguous_or(dweight_in, absent),
                      dfeature_map = contiguous_or(dfeature_map_in, absent),
                      dmedian = contiguous_or(dmedian_in, absent);
  const int64_t H = c.image_height, W = c.image_width;
  check_pixel_grad("color", dcolor, {3, H, W}, g.means3D);
  check_pixel_grad("depth", ddepth, {H, W}, g.means3D);
  check_pixel_grad("weight", dweight, {H, W}, g.means3D);
  check_pixel_grad("feature_map", dfeature_map, {g.channels(), H, W}, g.means3D);
  check_pixel_grad("median", dmedian, {H, W}, g.means3D);
  TORCH_CHECK_VALUE(dmedian.numel() == 0 || s.has_median(),
                    "gradient of median: the forward did not render the median depth");
  const MapGrads up = {dcolor, ddepth, dweight, dfeature_map, dmedian};
  if (g.means3D.is_cuda()) {
#ifdef DGRD_WITH_CUDA
    return backward_cuda(c, g, std::move(s), up, release_state);
#else
    refuse_without_cuda();
#endif
  }
  return backward_cpu(c, g, s, up);
}

at::Tensor count_touches(const RasterConfig& c, const ForwardState& s) {
  if (s.radii.is_cuda()) {
#ifdef DGRD_WITH_CUDA
    return count_touches_cuda(c, s);
#else
    refuse_without_cuda();
#endif
  }
  at::Tensor touch_count = at::zeros({s.radii.size(0)}, s.radii.options());
  AT_DISPATCH_FLOATING_TYPES(s.means2d.scalar_type(), "dgrd_count_touches_cpu", [&] {
    cpu::count_touches(make_camera<scalar_t>(c), make_state<scalar_t>(s, nullptr, nullptr),
                       int(s.radii.size(0)), s.lists(), touch_count.data_ptr<int>());
  });
  return touch_count;
}

std::tuple<at::Tensor, at::Tensor> gaussian_contributions(const RasterConfig& c,
                                                          const ForwardState& s,
                                                          bool statistics) {
  if (s.radii.is_cuda()) {
#ifdef DGRD_WITH_CUDA
    return gaussian_contributions_cuda(c, s, statistics);
#else
    refuse_without_cuda();
#endif
  }
  at::Tensor contribution =
      at::empty({s.radii.size(0), kContributionValues}, s.means2d.options());
  at::Tensor dominant =
      at::empty({c.image_height, c.image_width}, s.radii.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(s.means2d.scalar_type(), "dgrd_gaussian_contributions_cpu", [&] {
    cpu::gaussian_contributions(make_camera<scalar_t>(c),
                                make_state<scalar_t>(s, nullptr, nullptr), int(s.radii.size(0)),
                                s.lists(), s.point_list.size(0),
                                contribution.data_ptr<scalar_t>(), dominant.data_ptr<int>());
  });
  return {contribution, dominant};
}

PointBins bin_points(const at::Tensor& keys, int64_t tiles) {
  const auto sorted = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor bounds = at::arange(tiles + 1, keys.options());
  return {std::get<1>(sorted).to(at::kInt),
          at::searchsorted(std::get<0>(sorted), bounds, /*out_int32=*/true)};
}

at::Tensor checked_points(const GaussianTensors& g, const at::Tensor& points) {
  TORCH_CHECK_VALUE(points.dim() == 2 && points.size(1) == 3,
                    "points3D: expected shape (N, 3), got ", points.sizes());
  TORCH_CHECK_TYPE(points.scalar_type() == g.means3D.scalar_type(), "points3D: expected dtype ",
                   g.means3D.scalar_type(), " (that of means3D), got ", points.scalar_type());
  TORCH_CHECK_VALUE(points.device() == g.means3D.device(), "points3D: expected device ",
                    g.means3D.device(), " (that of means3D), got ", points.device());
  TORCH_CHECK_VALUE(points.size(0) < (int64_t(1) << 31), "points3D: at most 2^31 - 1 points");
  return points.contiguous();
}

at::Tensor point_opacity(const RasterConfig& c, const GaussianTensors& g, const ForwardState& s,
                         const at::Tensor& points) {
  if (points.is_cuda()) {
#ifdef DGRD_WITH_CUDA
    return point_opacity_cuda(c, g, s, points);
#else
    refuse_without_cuda();
#endif
  }
  const at::Tensor p = checked_points(g, points);
  const int64_t n = p.size(0);
  at::Tensor opacity = at::empty({n}, p.options());
  at::Tensor keys = at::empty({n}, p.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "dgrd_point_opacity_cpu", [&] {
    const Camera<scalar_t> cam = make_camera<scalar_t>(c);
    at::Tensor rows = struct_buffer<PointOnScreen<scalar_t>>(n, p.options());
    at::Tensor quadrics = struct_buffer<RayQuadric<scalar_t>>(g.count(), p.options());
    cpu::project_points(cam, p.data_ptr<scalar_t>(), int(n),
                        struct_pointer<PointOnScreen<scalar_t>>(rows), keys.data_ptr<int>(),
                        opacity.data_ptr<scalar_t>());
    cpu::ray_quadrics(cam, make_inputs<scalar_t>(g), struct_pointer<RayQuadric<scalar_t>>(quadrics));
    const PointBins bins = bin_points(keys, c.tiles_x() * c.tiles_y());
    cpu::point_opacity(cam, make_state<scalar_t>(s, nullptr, nullptr), int(s.radii.size(0)),
                       s.lists(),
                       struct_pointer<RayQuadric<scalar_t>>(quadrics),
                       struct_pointer<PointOnScreen<scalar_t>>(rows), bins.order.data_ptr<int>(),
                       bins.ranges.data_ptr<int>(), opacity.data_ptr<scalar_t>());
  });
  return opacity;
}

std::vector<at::Tensor> pack_camera(const std::vector<at::Tensor>& parts,
                                    const at::Tensor& like, bool keep_grad) {
  std::vector<at::Tensor> flat;
  std::vector<int64_t> sizes;
  flat.reserve(parts.size());
  for (const at::Tensor& t : parts) {
    const at::Tensor part = keep_grad || !t.requires_grad() ? t : t.detach();
    flat.push_back(part.reshape({-1}).to(like.options()));
    sizes.push_back(part.numel());
  }
  // at::cat always allocates: the copy is private even where nothing needed converting.
  return at::split_with_sizes(at::cat(flat), sizes);
}

at::Tensor mark_visible(const at::Tensor& positions, const at::Tensor& viewmatrix) {
  if (positions.is_cuda()) {
#ifdef DGRD_WITH_CUDA
    return mark_visible_cuda(positions, viewmatrix);
#else
    refuse_without_cuda();
#endif
  }
  const int64_t P = positions.size(0);
  at::Tensor visible = at::empty({P}, positions.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES(positions.scalar_type(), "dgrd_mark_visible_cpu", [&] {
    const scalar_t* p = positions.data_ptr<scalar_t>();
    const scalar_t* view = viewmatrix.data_ptr<scalar_t>();
    bool* out = visible.data_ptr<bool>();
    for (int64_t i = 0; i < P; ++i) out[i] = in_front_of_camera(view, load3(p, int(i)));
  });
  return visible;
}

void set_cuda_tuning(const std::map<std::string, int64_t>& switches) {
#ifdef DGRD_WITH_CUDA
  set_cuda_tuning_cuda(switches);
#else
  (void)switches;
  refuse_without_cuda();
#endif
}

void set_cuda_stage_timing(bool on) {
#ifdef DGRD_WITH_CUDA
  set_cuda_stage_timing_cuda(on);
#else
  (void)on;
  refuse_without_cuda();
#endif
}

std::vector<std::pair<std::string, double>> cuda_stage_ms() {
#ifdef DGRD_WITH_CUDA
  return cuda_stage_ms_cuda();
#else
  refuse_without_cuda();
#endif
}

bool has_cuda() {
#ifdef DGRD_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace dgrd
