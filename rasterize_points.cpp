// PyTorch glue for the CPU backend, and the dispatch by device.
#include "rasterize_points.h"

#include <numeric>
#include <sstream>

#include "cuda_rasterizer/cpu_backend.h"
#include "cuda_rasterizer/preprocess.h"

namespace dgrd {

ForwardState allocate_state(const RasterConfig& c, int64_t count, const torch::TensorOptions& opts) {
  const auto ints = opts.dtype(torch::kInt32);
  const int64_t H = c.image_height, W = c.image_width;
  ForwardState s;
  s.radii = torch::empty({count}, ints);
  s.means2d = torch::empty({count, 2}, opts);
  s.conic_opacity = torch::empty({count, 4}, opts);
  s.features = torch::empty({count, 4}, opts);
  s.tile_ranges = torch::empty({int64_t(c.tiles_x()) * c.tiles_y(), 2}, ints);
  s.pixel_state = torch::empty({3, H, W}, opts);
  s.n_contrib = torch::empty({H, W}, ints);
  return s;
}

GradientTensors GradientTensors::zeros_like_inputs(const GaussianTensors& g) {
  const int64_t P = g.count();
  const auto opts = g.means3D.options();
  GradientTensors d;
  d.means3D = torch::zeros({P, 3}, opts);
  d.means2D = torch::zeros({P, 3}, opts);
  d.opacities = torch::zeros({P, 1}, opts);
  d.shs = torch::zeros_like(g.shs);
  d.colors_precomp = torch::zeros_like(g.colors_precomp);
  d.scales = torch::zeros_like(g.scales);
  d.rotations = torch::zeros_like(g.rotations);
  d.cov3D_precomp = torch::zeros_like(g.cov3D_precomp);
  return d;
}

void check_tile_pairs(int64_t pairs, int64_t bytes_per_pair) {
  if (pairs <= kMaxTilePairs) return;
  std::ostringstream msg;
  msg << "diff_gaussian_rasterization_depth: the scene needs " << pairs
      << " (tile, Gaussian) pairs (" << double(pairs) * bytes_per_pair / double(1 << 30)
      << " GiB of sort buffers), more than the 2^31 - 1 a render can index. Reduce the number or "
         "the screen size of the Gaussians, or the image size.";
  throw std::runtime_error(msg.str());
}

namespace {

void check_pixel_grad(const char* name, const torch::Tensor& t, std::vector<int64_t> shape,
                      const torch::Tensor& like) {
  if (!t.defined() || t.numel() == 0) return;
  TORCH_CHECK_VALUE(t.sizes() == c10::IntArrayRef(shape), "gradient of ", name, ": expected shape ",
                    c10::IntArrayRef(shape), ", got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type() && t.device() == like.device(),
                   "gradient of ", name, ": expected ", like.scalar_type(), " on ", like.device(),
                   ", got ", t.scalar_type(), " on ", t.device());
}

}  // namespace

ForwardResult forward_cpu(const RasterConfig& c, const GaussianTensors& g) {
  const int64_t P = g.count(), H = c.image_height, W = c.image_width;
  const auto opts = g.means3D.options();
  torch::Tensor color = torch::empty({3, H, W}, opts);
  torch::Tensor depth = torch::empty({H, W}, opts);
  torch::Tensor weight = torch::empty({H, W}, opts);
  ForwardState s = allocate_state(c, P, opts);
  AT_DISPATCH_FLOATING_TYPES(g.means3D.scalar_type(), "dgrd_forward_cpu", [&] {
    using T = scalar_t;
    const Camera<T> cam = make_camera<T>(c);
    std::vector<int> tiles_touched(size_t(P), 0);
    const GaussianState<T> st = make_state<T>(s, tiles_touched.data());
    cpu::preprocess(cam, make_inputs<T>(g), st);
    const int64_t pairs = std::accumulate(tiles_touched.begin(), tiles_touched.end(), int64_t(0));
    check_tile_pairs(pairs, sizeof(int));
    s.point_list = torch::empty({pairs}, opts.dtype(torch::kInt32));
    cpu::bin_gaussians(cam, int(P), st, s.point_list.data_ptr<int>(), s.tile_ranges.data_ptr<int>());
    const TileLists lists = {s.point_list.data_ptr<int>(), s.tile_ranges.data_ptr<int>()};
    cpu::render(cam, st, lists, make_pixel_buffers<T>(s, color, depth, weight));
  });
  return {color, depth, weight, s.radii.clone(), s.to_list()};
}

BackwardResult backward_cpu(const RasterConfig& c, const GaussianTensors& g, const ForwardState& s,
                            const torch::Tensor& dcolor, const torch::Tensor& ddepth,
                            const torch::Tensor& dweight) {
  const int64_t P = g.count();
  GradientTensors grads = GradientTensors::zeros_like_inputs(g);
  AT_DISPATCH_FLOATING_TYPES(g.means3D.scalar_type(), "dgrd_backward_cpu", [&] {
    using T = scalar_t;
    const Camera<T> cam = make_camera<T>(c);
    const GaussianState<T> st = make_state<T>(s, nullptr);
    const TileLists lists = {s.point_list.data_ptr<int>(), s.tile_ranges.data_ptr<int>()};
    const PixelGrads<T> pg = {data_or_null<T>(dcolor), data_or_null<T>(ddepth),
                              data_or_null<T>(dweight)};
    std::vector<SplatGrad<T>> splat(size_t(P), SplatGrad<T>{});
    cpu::render_backward(cam, st, lists, make_pixel_buffers<T>(s, {}, {}, {}), pg, int(P),
                         splat.data());
    cpu::preprocess_backward(cam, make_inputs<T>(g), st.radii, splat.data(),
                             grads.pointers<T>());
  });
  return grads.to_list();
}

ForwardResult forward(const RasterConfig& c, const GaussianTensors& g) {
  if (g.means3D.is_cuda()) {
#ifdef DGRD_WITH_CUDA
    return forward_cuda(c, g);
#else
    TORCH_CHECK(false, "diff_gaussian_rasterization_depth was built without CUDA");
#endif
  }
  return forward_cpu(c, g);
}

BackwardResult backward(const RasterConfig& c, const GaussianTensors& g,
                        const std::vector<torch::Tensor>& state, const torch::Tensor& dcolor,
                        const torch::Tensor& ddepth, const torch::Tensor& dweight) {
  const ForwardState s = ForwardState::from_list(state);
  const int64_t H = c.image_height, W = c.image_width;
  check_pixel_grad("color", dcolor, {3, H, W}, g.means3D);
  check_pixel_grad("depth", ddepth, {H, W}, g.means3D);
  check_pixel_grad("weight", dweight, {H, W}, g.means3D);
  if (g.means3D.is_cuda()) {
#ifdef DGRD_WITH_CUDA
    return backward_cuda(c, g, s, dcolor, ddepth, dweight);
#else
    TORCH_CHECK(false, "diff_gaussian_rasterization_depth was built without CUDA");
#endif
  }
  return backward_cpu(c, g, s, dcolor, ddepth, dweight);
}

torch::Tensor mark_visible(const torch::Tensor& positions, const torch::Tensor& viewmatrix) {
  if (positions.is_cuda()) {
#ifdef DGRD_WITH_CUDA
    return mark_visible_cuda(positions, viewmatrix);
#else
    TORCH_CHECK(false, "diff_gaussian_rasterization_depth was built without CUDA");
#endif
  }
  const int64_t P = positions.size(0);
  torch::Tensor visible = torch::empty({P}, positions.options().dtype(torch::kBool));
  AT_DISPATCH_FLOATING_TYPES(positions.scalar_type(), "dgrd_mark_visible_cpu", [&] {
    const scalar_t* p = positions.data_ptr<scalar_t>();
    const scalar_t* view = viewmatrix.data_ptr<scalar_t>();
    bool* out = visible.data_ptr<bool>();
    for (int64_t i = 0; i < P; ++i) out[i] = in_front_of_camera(view, load3(p, int(i)));
  });
  return visible;
}

bool has_cuda() {
#ifdef DGRD_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace dgrd
