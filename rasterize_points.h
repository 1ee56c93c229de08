// PyTorch glue: the settings and tensors that cross from Python, the forward state kept for the
// backward (one layout, named), and the per-device entry points.
#pragma once

// ATen's tensor alone, not torch/extension.h: that adds the Python bindings and the C++ nn API,
// which the glue does not use and which take most of each build's time (doc/design.md, "Glue").
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cuda_rasterizer/types.h"

namespace dgrd {

struct RasterConfig {
  int64_t image_height = 0, image_width = 0;
  double tanfovx = 1, tanfovy = 1, scale_modifier = 1;
  int64_t sh_degree = 0;
  double kernel_size = kDefaultKernelSize;  // Camera::kernel_size
  bool prefiltered = false, antialiasing = false, debug = false;
  bool median_depth = false;  // render the median depth map too (issue 12)
  bool inverse_depth = false;  // depth (and median) maps of 1/z: Camera::inverse_depth
  bool orthographic = false;   // Camera::orthographic
  bool fisheye = false;        // Camera::fisheye
  // Camera::fisheye_distorted, fisheye_k and fisheye_max_angle (settings fisheye_distortion)
  bool fisheye_distorted = false;
  double fisheye_k[4] = {0, 0, 0, 0};
  double fisheye_max_angle = 0;
  // Camera::pinhole_distorted, pinhole_k and pinhole_max_u (settings pinhole_distortion)
  bool pinhole_distorted = false;
  double pinhole_k[kLensCoefficients] = {};
  double pinhole_max_u = 0;
  bool camera_grad = false;  // the backward also returns d viewmatrix, d projmatrix, d campos
  // means2D given as (P, 4): the backward's d means2D is (P, 4), columns 2-3 AbsGS's absolute
  // gradient (OptionalGrads::mean2d_abs in NDC units)
  bool absolute_grad = false;
  at::Tensor bg, viewmatrix, projmatrix, campos;  // flat, on the Gaussians' device and dtype
  // Camera::subpixel_offset (H, W, 2) on the same device and dtype, or undefined (the pixels'
  // own coordinates); Camera::sample_margin
  at::Tensor subpixel_offset;
  double sample_margin = 0;

  int tiles_x() const { return int((image_width + kTileSize - 1) / kTileSize); }
  int tiles_y() const { return int((image_height + kTileSize - 1) / kTileSize); }
};

// Per-Gaussian inputs; an absent one is an empty tensor. `dc` (P, 1, 3): SH coefficient 0 given
// apart from the others in `shs` (the 2024 API). `features` (P, C): the optional channels
// rendered into the feature map.
struct GaussianTensors {
  at::Tensor means3D, opacities, dc, shs, colors_precomp, scales, rotations, cov3D_precomp;
  at::Tensor features;
  int64_t count() const { return means3D.size(0); }
  int64_t channels() const { return features.defined() && features.dim() == 2 ? features.size(1) : 0; }
};

// What the forward keeps for the backward. Never handed to the user.
struct ForwardState {
  at::Tensor radii;           // (P) int32
  at::Tensor means2d;         // (P, 2), or (V, 2) with gaussian_ids
  at::Tensor conic_opacity;   // (P, 4), or (V, 4)
  at::Tensor features;        // (P, 4): r, g, b, view depth; the CUDA backend's (P, 1) where
                              // the caller gives the colours: the depth alone
                              // (GaussianState::colors); (V, 4) with gaussian_ids
  at::Tensor point_list;      // (N) int32: state rows (Gaussian ids but with gaussian_ids) by
                              // tile, then depth
  at::Tensor tile_ranges;     // (tiles, 2) int32
  at::Tensor pixel_state;     // (3, H, W): final transmittance, weight, depth
  at::Tensor n_contrib;       // (H, W) int32
  at::Tensor median_contrib;  // (H, W) int32 with median_depth, else empty: 1 + list
                              // position of the median's splat, 0 where T stays above 0.5
  at::Tensor tile_splits;     // CUDA (TileSplits): int32 [length, capacity x 2 parts];
                              // empty where lists are not split
  at::Tensor split_state;     // CUDA: (capacity, kSplitValues, kTilePixels); else empty
  at::Tensor gaussian_ids;    // CUDA's compact state (gpu::CudaTuning::compact_state): (V)
                              // int32, the Gaussian of each row of means2d, conic_opacity and
                              // features: the V with tiles, by depth (TileLists::gaussians);
                              // else empty, row i being Gaussian i

  std::vector<at::Tensor> to_list() const {
    return {radii,       means2d,   conic_opacity,  features,    point_list,  tile_ranges,
            pixel_state, n_contrib, median_contrib, tile_splits, split_state, gaussian_ids};
  }
  static ForwardState from_list(const std::vector<at::Tensor>& v) {
    TORCH_CHECK(v.size() == 12, "diff_gaussian_rasterization_depth: corrupt forward state");
    return {v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11]};
  }
  // The tile lists, their rows named by gaussian_ids where the state is compact.
  TileLists lists() const {
    return {point_list.data_ptr<int>(), tile_ranges.data_ptr<int>(),
            gaussian_ids.numel() > 0 ? gaussian_ids.data_ptr<int>() : nullptr};
  }
  bool has_median() const { return median_contrib.numel() > 0; }
};

// color (3,H,W), depth (H,W), weight (H,W), radii (P), feature_map (C,H,W) or empty,
// median (H,W) or empty, state
using ForwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                 at::Tensor, at::Tensor, std::vector<at::Tensor>>;
// d means3D, d means2D (P,3), d opacities (P,1), d dc, d shs, d colors_precomp, d scales,
// d rotations, d cov3D_precomp, d features (empty without features), d viewmatrix (16),
// d projmatrix (16), d campos (3) (the last three empty unless RasterConfig::camera_grad)
using BackwardResult = std::vector<at::Tensor>;

// Upstream gradients of the rendered maps; an absent one is an empty tensor.
struct MapGrads {
  at::Tensor color, depth, weight, feature_map, median;
};

// ----------------------------------------------------------------- helpers shared by devices

template <typename T>
const T* data_or_null(const at::Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}

// The same for a tensor the backend writes.
template <typename T>
T* output_or_null(const at::Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}

template <typename T>
Camera<T> make_camera(const RasterConfig& c) {
  Camera<T> cam;
  cam.viewmatrix = c.viewmatrix.data_ptr<T>();
  cam.projmatrix = c.projmatrix.data_ptr<T>();
  cam.campos = c.campos.data_ptr<T>();
  cam.background = c.bg.data_ptr<T>();
  cam.width = int(c.image_width);
  cam.height = int(c.image_height);
  cam.tiles_x = c.tiles_x();
  cam.tiles_y = c.tiles_y();
  cam.tanfovx = T(c.tanfovx);
  cam.tanfovy = T(c.tanfovy);
  cam.focal_x = T(c.image_width / (2.0 * c.tanfovx));
  cam.focal_y = T(c.image_height / (2.0 * c.tanfovy));
  cam.scale_modifier = T(c.scale_modifier);
  cam.sh_degree = int(c.sh_degree);
  cam.kernel_size = T(c.kernel_size);
  cam.antialiasing = c.antialiasing;
  cam.inverse_depth = c.inverse_depth;
  cam.orthographic = c.orthographic;
  cam.fisheye = c.fisheye;
  cam.fisheye_distorted = c.fisheye_distorted;
  for (int k = 0; k < 4; ++k) cam.fisheye_k[k] = T(c.fisheye_k[k]);
  cam.fisheye_max_angle = T(c.fisheye_max_angle);
  cam.pinhole_distorted = c.pinhole_distorted;
  for (int k = 0; k < kLensCoefficients; ++k) cam.pinhole_k[k] = T(c.pinhole_k[k]);
  cam.pinhole_max_u = T(c.pinhole_max_u);
  cam.subpixel_offset = output_or_null<T>(c.subpixel_offset);
  cam.sample_margin = T(c.sample_margin);
  return cam;
}

template <typename T>
GaussianInputs<T> make_inputs(const GaussianTensors& g) {
  GaussianInputs<T> in;
  in.count = int(g.count());
  in.means3D = data_or_null<T>(g.means3D);
  in.opacities = data_or_null<T>(g.opacities);
  in.dc = data_or_null<T>(g.dc);
  in.shs = data_or_null<T>(g.shs);
  in.sh_coeffs = (in.dc ? 1 : 0) + (in.shs ? int(g.shs.size(1)) : 0);
  in.colors_precomp = data_or_null<T>(g.colors_precomp);
  in.scales = data_or_null<T>(g.scales);
  in.rotations = data_or_null<T>(g.rotations);
  in.cov3D_precomp = data_or_null<T>(g.cov3D_precomp);
  return in;
}

// tiles_touched and rects: the forward's scratch (null in the backward). colors: the caller's
// colours, read where s keeps the depth alone (features of (P, 1)).
template <typename T>
GaussianState<T> make_state(const ForwardState& s, int64_t* tiles_touched, TileRect* rects,
                            const at::Tensor& colors = {}) {
  // Rows without an entry are null: GaussianState::has_rows is false before the CUDA compact
  // state's rows are made (allocate_gaussian_state without rows).
  const bool depth_only = s.features.dim() == 2 && s.features.size(1) == 1;
  Vec4<T>* features = reinterpret_cast<Vec4<T>*>(output_or_null<T>(s.features));
  GaussianState<T> st = {s.radii.data_ptr<int>(),
                         reinterpret_cast<Vec2<T>*>(output_or_null<T>(s.means2d)),
                         reinterpret_cast<Vec4<T>*>(output_or_null<T>(s.conic_opacity)),
                         depth_only ? nullptr : features, tiles_touched, rects};
  if (depth_only) {
    st.colors = colors.numel() > 0 ? colors.data_ptr<T>() : nullptr;
    st.depths = output_or_null<T>(s.features);
  }
  return st;
}

template <typename T>
PixelBuffers<T> make_pixel_buffers(const ForwardState& s, at::Tensor color, at::Tensor depth,
                                   at::Tensor weight) {
  return {color.defined() ? color.data_ptr<T>() : nullptr,
          depth.defined() ? depth.data_ptr<T>() : nullptr,
          weight.defined() ? weight.data_ptr<T>() : nullptr, s.pixel_state.data_ptr<T>(),
          s.n_contrib.data_ptr<int>()};
}

// The optional outputs' pointers: the features of g, the maps given (empty: not rendered), and
// the median's list positions in s.
template <typename T>
OptionalOutputs<T> make_optional_outputs(const GaussianTensors& g, const ForwardState& s,
                                         const at::Tensor& feature_map,
                                         const at::Tensor& median) {
  return {int(g.channels()), data_or_null<T>(g.features), output_or_null<T>(feature_map),
          output_or_null<T>(median), output_or_null<int>(s.median_contrib)};
}

// The forward's state is allocated in two steps, so that the size checks below run in between:
// the P-sized part (radii, means2d, conic_opacity, features: the depth alone with depth_only),
// all the preprocess needs (the radii alone without `rows`: the CUDA compact state's rows come
// after the sort by depth), ...
ForwardState allocate_gaussian_state(int64_t count, const at::TensorOptions& opts,
                                     bool depth_only = false, bool rows = true);
// ... and, once the scene is known to fit, the per-tile part (tile_ranges: the binning writes
// it) and the per-pixel part (pixel_state, n_contrib, and median_contrib with c.median_depth;
// tile splits empty), which the CUDA forward takes after its sort. point_list is the caller's,
// sized by the pair count.
void allocate_tile_ranges(const RasterConfig& c, ForwardState& s, const at::TensorOptions& opts);
void allocate_pixel_state(const RasterConfig& c, ForwardState& s, const at::TensorOptions& opts);

// Gradient tensors shaped like the inputs, and their pointers.
struct GradientTensors {
  at::Tensor means3D, means2D, opacities, dc, shs, colors_precomp, scales, rotations,
      cov3D_precomp;
  at::Tensor features;
  at::Tensor camera;  // (41): a CameraGrad, or empty when the camera takes no gradient
  using Allocate = at::Tensor (*)(c10::IntArrayRef, const at::TensorOptions&);
  // All zeros.
  static GradientTensors zeros_like_inputs(const GaussianTensors& g, bool camera_grad);
  // The preprocess backward's outputs (means3D .. cov3D_precomp) from `allocate`, for a backend
  // that writes every value of them (zero_unwritten_grads); the features' and the camera's
  // gradients, sums, zeros.
  static GradientTensors like_inputs(const GaussianTensors& g, bool camera_grad,
                                     Allocate allocate);
  // The same in two steps: the features' and the camera's gradients alone, ...
  static GradientTensors sums_only(const GaussianTensors& g, bool camera_grad);
  // ... then each of the preprocess backward's outputs whose input is present and which is not
  // allocated yet, of those in `only` if it names any (the CUDA glue takes some before its
  // render backward, the rest after).
  using Field = at::Tensor GradientTensors::*;
  void allocate_missing(const GaussianTensors& g, Allocate allocate,
                        const std::vector<Field>& only = {});
  BackwardResult to_list() const {
    const auto part = [this](int64_t start, int64_t size) {
      return camera.numel() > 0 ? camera.narrow(0, start, size) : camera;
    };
    return {means3D,     means2D,  opacities,   dc,           shs,        colors_precomp,
            scales,      rotations, cov3D_precomp, features, part(0, 16), part(16, 16),
            part(32, 3), part(35, 2), part(37, kLensCoefficients)};
  }
  template <typename T>
  CameraGrad<T>* camera_pointer() const {
    static_assert(sizeof(CameraGrad<T>) == kCameraGradValues * sizeof(T), "CameraGrad layout");
    return camera.numel() > 0 ? reinterpret_cast<CameraGrad<T>*>(camera.data_ptr<T>()) : nullptr;
  }
  template <typename T>
  GaussianGrads<T> pointers() const {
    auto p = [](const at::Tensor& t) { return t.numel() > 0 ? t.data_ptr<T>() : nullptr; };
    return {p(means3D), p(means2D),        p(opacities), p(dc),          p(shs),
            p(colors_precomp), p(scales), p(rotations), p(cov3D_precomp)};
  }
};

// Per-pixel bytes of the outputs beyond colour, depth and weight: C feature channels, and the
// median with its list positions.
inline int64_t optional_pixel_bytes(const RasterConfig& c, const GaussianTensors& g,
                                    int64_t value_bytes) {
  return g.channels() * value_bytes + (c.median_depth ? value_bytes + int64_t(sizeof(int32_t)) : 0);
}

// The optional outputs' backward: their upstream gradients (absent: empty) and the features'
// gradient tensor.
template <typename T>
OptionalGrads<T> make_optional_grads(const GaussianTensors& g, const ForwardState& s,
                                     const MapGrads& up, const GradientTensors& d) {
  return {int(g.channels()), data_or_null<T>(g.features), data_or_null<int>(s.median_contrib),
          data_or_null<T>(up.feature_map), data_or_null<T>(up.median),
          output_or_null<T>(d.features)};
}

// AbsGS's statistic (absolute_grad): its sums, P x 2 in pixel units, zeros, on the Gaussians'
// device, or an empty tensor when not asked for ...
at::Tensor absolute_grad_sums(const RasterConfig& c, const GaussianTensors& g);
// ... and, after the backward, d means2D (P, 3) made (P, 4): its first two columns, then the
// sums in NDC units, scaled as the preprocess backward scales the signed gradient.
void append_absolute_grad(const RasterConfig& c, const at::Tensor& sums, GradientTensors& d);

// Largest number of (tile, Gaussian) pairs a render may hold: indices are 32-bit, and the CUDA
// render kernels step positions past a list's end, which must not wrap: a batch start by 256
// (start += 256 while start < end: two batches of margin) and a split cursor by a part (the next
// split after the last is up to one part length past the end, as is (n + L - 1) in
// TileSplits::parts_of): 2^31 - 2^24 - 513 pairs, 0.8% fewer than 32 bits alone would index.
constexpr int64_t kMaxTilePairs = (int64_t(1) << 31) - 1 - 2 * kTilePixels - kMaxSplitLength;

// Scratch for `count` plain structs S on the device of `opts`, as bytes (at::empty's blocks are
// aligned far beyond any S), and its typed pointer.
template <typename S>
at::Tensor struct_buffer(int64_t count, const at::TensorOptions& opts) {
  return at::empty({count * int64_t(sizeof(S))}, opts.dtype(at::kByte));
}
template <typename S>
S* struct_pointer(const at::Tensor& t) {
  return reinterpret_cast<S*>(t.data_ptr<uint8_t>());
}

// The opacity field's query points binned by tile, from their keys ((N) int32: a tile, or
// `tiles` where none sees the point): order (N) int32, the point ids by tile (ties in id order),
// and ranges (tiles + 1) int32, tile t's points being order[ranges[t] .. ranges[t + 1]). ATen's
// sort and search, on the keys' device.
struct PointBins {
  at::Tensor order, ranges;
};
PointBins bin_points(const at::Tensor& keys, int64_t tiles);
// The opacity field's points3D checked against the Gaussians (shape (N, 3), their dtype and
// device; a ValueError or TypeError naming points3D), made contiguous.
at::Tensor checked_points(const GaussianTensors& g, const at::Tensor& points);

// Throw std::runtime_error (a RuntimeError in Python) naming the number of pairs, or the image
// size, and the GiB needed, when the pairs exceed what 32-bit indices address or the buffers
// exceed `bytes_available` (host memory for the CPU backend, free device memory for CUDA).
void check_tile_pairs(int64_t pairs, int64_t bytes_per_pair, int64_t bytes_available);
void check_image_buffers(int64_t height, int64_t width, int64_t bytes_per_pixel,
                         int64_t bytes_available);

// The CPU backend's budget: MemAvailable of /proc/meminfo, but at least half of MemTotal (so
// that other processes' passing peaks never refuse a modest render; requests larger than the
// machine are still refused before the OOM killer acts), lowered to a cgroup memory limit and
// to the environment variable DGRD_HOST_MEMORY_LIMIT (a byte count) when set.
int64_t host_bytes_available();

// Per-device entry points.
ForwardResult forward_cpu(const RasterConfig& c, const GaussianTensors& g);
BackwardResult backward_cpu(const RasterConfig& c, const GaussianTensors& g, const ForwardState& s,
                            const MapGrads& up);
#if defined(DGRD_WITH_CUDA) || defined(DGRD_EMULATE_CUDA)
ForwardResult forward_cuda(const RasterConfig& c, const GaussianTensors& g);
// release_state: s holds the state's only references; the buffers the render backward alone
// reads are freed after it, before the rest of the input gradients are taken.
BackwardResult backward_cuda(const RasterConfig& c, const GaussianTensors& g, ForwardState s,
                             const MapGrads& up, bool release_state = false);
at::Tensor count_touches_cuda(const RasterConfig& c, const ForwardState& s);
at::Tensor point_opacity_cuda(const RasterConfig& c, const GaussianTensors& g,
                              const ForwardState& s, const at::Tensor& points);
std::tuple<at::Tensor, at::Tensor> gaussian_contributions_cuda(const RasterConfig& c,
                                                               const ForwardState& s,
                                                               bool statistics);
at::Tensor mark_visible_cuda(const at::Tensor& positions, const at::Tensor& viewmatrix);
void set_cuda_tuning_cuda(const std::map<std::string, int64_t>& switches);
void set_cuda_stage_timing_cuda(bool on);
std::vector<std::pair<std::string, double>> cuda_stage_ms_cuda();
#endif

}  // namespace dgrd

namespace dgrd {
// Device dispatch, called from Python.
ForwardResult forward(const RasterConfig& c, const GaussianTensors& g);
// The maps' upstream gradients: None (from Python) where no loss reaches that map.
using UpstreamGrad = std::optional<at::Tensor>;
// The touch count of every Gaussian ((P) int32, `touches` in blend.h: MonoGS's n_touched) from
// a forward's state, on the state's device; a walk of the tile lists of its own, so the forward
// pays nothing for it unless asked.
at::Tensor count_touches(const RasterConfig& c, const ForwardState& s);
// Each Gaussian's contribution statistics ((P, 5) of the state's dtype, blend.h: weight sum,
// weight max, pixels, dominated pixels, opacity-transmittance sum) and each pixel's dominant
// Gaussian ((H, W) int32, -1 where nothing is blended) from a forward's state, on its device;
// a walk of its own.
// `statistics`: whether the caller reads the statistics, not the dominant map alone (on CUDA
// under torch.use_deterministic_algorithms, their float sums are then summed in a fixed order:
// gpu::PairSums).
std::tuple<at::Tensor, at::Tensor> gaussian_contributions(const RasterConfig& c,
                                                          const ForwardState& s,
                                                          bool statistics = true);
// The opacity field at points3D ((N, 3), the Gaussians' dtype and device; opacity_field.h): each
// point's opacity in this view, 1 - its transmittance through the splats of its pixel's tile
// list, each faded in front of its Gaussian's peak along the point's ray; 1 where the view does
// not see the point (off the image, or in front of the near plane). A walk of its own, from a
// forward's state and the Gaussians it rendered.
at::Tensor point_opacity(const RasterConfig& c, const GaussianTensors& g, const ForwardState& s,
                         const at::Tensor& points);
// release_state: the caller holds no other reference to the state (take_state in bindings.h),
// which the CUDA backward then frees in part once its render backward has read it.
BackwardResult backward(const RasterConfig& c, const GaussianTensors& g, ForwardState state,
                        bool release_state, const UpstreamGrad& dcolor,
                        const UpstreamGrad& ddepth, const UpstreamGrad& dweight,
                        const UpstreamGrad& dfeature_map, const UpstreamGrad& dmedian);
// An optional tensor (an input, an upstream gradient) as the backends take it: contiguous, or
// `absent`, an empty tensor, for None.
inline at::Tensor contiguous_or(const std::optional<at::Tensor>& t,
                                const at::Tensor& absent) {
  return t ? t->contiguous() : absent;
}
// The camera's tensors (bg, viewmatrix, projmatrix, campos, any layouts) as flat views of one
// private copy with the device and dtype of `like`; detached unless keep_grad (then the copy
// is differentiable, so that camera gradients reach the caller's tensors through any view).
std::vector<at::Tensor> pack_camera(const std::vector<at::Tensor>& parts,
                                    const at::Tensor& like, bool keep_grad);
at::Tensor mark_visible(const at::Tensor& positions, const at::Tensor& viewmatrix);
bool has_cuda();
// The benchmark's work counts of a float32 CPU forward, from its state: pairs, evaluations,
// exps, blends, lane evaluations (cpu::RenderWork).
std::vector<int64_t> cpu_render_work(const RasterConfig& c, const std::vector<at::Tensor>& state);
// The float CPU path's technique switches (benchmarks): lanes, power bound.
void set_cpu_tuning(bool lanes, bool power_bound);
// The CUDA backend's technique switches (benchmarks and tests), by the names of gpu::CudaTuning's
// fields; those not named take their defaults.
void set_cuda_tuning(const std::map<std::string, int64_t>& switches);
// Device milliseconds of each CUDA stage of the last forward and backward, timed while
// set_cuda_stage_timing(true) (benchmarks; off by default).
void set_cuda_stage_timing(bool on);
std::vector<std::pair<std::string, double>> cuda_stage_ms();
// Seconds each CPU stage took in this thread's last forward and backward (benchmarks).
std::map<std::string, double> cpu_stage_seconds();
}  // namespace dgrd
