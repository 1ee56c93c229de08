// PyTorch glue for the CUDA backend: allocation through the caching allocator, stage order, one
// host read per forward (the number of tile pairs), launch checks, and debug synchronization.
// Compiled by nvcc for GPUs and, under DGRD_EMULATE_CUDA, by the host compiler for the emulated
// backend (CPU tensors, the kernels run by cuda_emulation.h): the few device-specific lines are
// in DeviceContext, device_bytes_available and uninitialized.
#ifndef DGRD_EMULATE_CUDA
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#endif

#include <algorithm>

#include "cuda_rasterizer/cuda_backend.h"
#include "rasterize_points.h"

namespace dgrd {

namespace {

// Checks a launch; with `wait` (debug mode) also waits for it, so an error names the stage that
// failed.
void check_launch(const char* stage, bool wait = false) {
  const cudaError_t launch = cudaGetLastError();
  TORCH_CHECK(launch == cudaSuccess, "diff_gaussian_rasterization_depth: CUDA stage '", stage,
              "' failed to launch: ", cudaGetErrorString(launch));
  if (wait) {
    const cudaError_t run = cudaDeviceSynchronize();
    TORCH_CHECK(run == cudaSuccess, "diff_gaussian_rasterization_depth: CUDA stage '", stage,
                "' failed: ", cudaGetErrorString(run));
  }
}

void check_stage(const RasterConfig& c, const char* stage) { check_launch(stage, c.debug); }

// The device the stages run on: the tensors' GPU and its current stream.
struct DeviceContext {
#ifdef DGRD_EMULATE_CUDA
  explicit DeviceContext(const torch::Tensor&) {}
  cudaStream_t stream = nullptr;
#else
  explicit DeviceContext(const torch::Tensor& t)
      : guard(t.device()), stream(c10::cuda::getCurrentCUDAStream()) {}
  const c10::cuda::CUDAGuard guard;
  const cudaStream_t stream;
#endif
};

// A CUB call reports its own errors (sizing, scratch, launch) through its return value.
void check_cub(cudaError_t status, const char* stage) {
  TORCH_CHECK(status == cudaSuccess, "diff_gaussian_rasterization_depth: CUDA stage '", stage,
              "' (CUB) failed: ", cudaGetErrorString(status));
}

// Free device memory plus what PyTorch's caching allocator holds but does not use.
int64_t device_bytes_available() {
#ifdef DGRD_EMULATE_CUDA
  return host_bytes_available();
#else
  size_t free_bytes = 0, total_bytes = 0;
  C10_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const auto stats =
      c10::cuda::CUDACachingAllocator::getDeviceStats(c10::cuda::current_device());
  const size_t aggregate = 0;  // StatType::AGGREGATE, whose namespace varies across versions
  const int64_t cached = stats.reserved_bytes[aggregate].current -
                         stats.allocated_bytes[aggregate].current;
  return int64_t(free_bytes) + std::max<int64_t>(cached, 0);
#endif
}

// A buffer the kernels must write before reading. Under emulation it is poisoned, so that
// reading an unwritten element shows (NaN, or an index far out of range).
torch::Tensor uninitialized(torch::Tensor t) {
#ifdef DGRD_EMULATE_CUDA
  using emu::PoisonKind;
  const auto type = t.scalar_type();
  const PoisonKind kind = type == torch::kInt32   ? PoisonKind::Int32
                          : type == torch::kInt64 ? PoisonKind::Int64
                                                  : PoisonKind::Bytes;
  emu::poison(t.data_ptr(), t.nbytes(), kind);
#endif
  return t;
}

torch::Tensor device_empty(c10::IntArrayRef sizes, const torch::TensorOptions& opts) {
  return uninitialized(torch::empty(sizes, opts));
}

torch::Tensor scratch(size_t bytes, const torch::Tensor& like) {
  return device_empty({int64_t(bytes)}, like.options().dtype(torch::kUInt8));
}

void require_float32(const GaussianTensors& g) {
  TORCH_CHECK_TYPE(g.means3D.scalar_type() == torch::kFloat32,
                   "diff_gaussian_rasterization_depth: means3D: the CUDA backend takes float32, "
                   "got ", g.means3D.scalar_type());
}

}  // namespace

ForwardResult forward_cuda(const RasterConfig& c, const GaussianTensors& g) {
  require_float32(g);
  const DeviceContext device(g.means3D);
  const cudaStream_t stream = device.stream;
  const int64_t P = g.count(), H = c.image_height, W = c.image_width;
  const auto opts = g.means3D.options();
  const auto longs = opts.dtype(torch::kInt64);

  // Only P-sized memory until the pair count and the image are known to fit.
  ForwardState s = allocate_gaussian_state(P, opts);
  for (torch::Tensor* t : {&s.radii, &s.means2d, &s.conic_opacity, &s.features}) uninitialized(*t);
  const Camera<float> cam = make_camera<float>(c);
  const GaussianInputs<float> in = make_inputs<float>(g);
  torch::Tensor tiles_touched = device_empty({P}, longs);
  static_assert(sizeof(TileRect) == 4 * sizeof(int), "TileRect must be 4 ints");
  torch::Tensor rects = device_empty({P, 4}, opts.dtype(torch::kInt32));
  const GaussianState<float> st = make_state<float>(
      s, tiles_touched.data_ptr<int64_t>(), reinterpret_cast<TileRect*>(rects.data_ptr<int>()));

  gpu::preprocess(cam, in, st, stream);
  check_stage(c, "preprocess");

  int64_t pairs = 0;
  torch::Tensor offsets = device_empty({P}, longs);
  if (P > 0) {
    size_t bytes = 0;
    check_cub(gpu::inclusive_scan(nullptr, bytes, st.tiles_touched, nullptr, int(P), stream),
              "scan (sizing)");
    torch::Tensor temp = scratch(bytes, g.means3D);
    check_cub(gpu::inclusive_scan(temp.data_ptr(), bytes, st.tiles_touched,
                                  offsets.data_ptr<int64_t>(), int(P), stream),
              "scan");
    check_stage(c, "scan");
    pairs = offsets[P - 1].item<int64_t>();  // the one host read of the forward
  }
  // keys and ids twice (unsorted, sorted) and the sort's scratch, about as large again
  const int64_t pair_bytes = 4 * int64_t(sizeof(uint64_t) + sizeof(int));
  const int64_t available = device_bytes_available();
  check_tile_pairs(pairs, pair_bytes, available);
  // colour (3), depth, weight, the saved pixel state (3) and n_contrib, and the optional maps
  check_image_buffers(H, W, 9 * int64_t(sizeof(float)) + optional_pixel_bytes(c, g, sizeof(float)),
                      available - pairs * pair_bytes);

  allocate_pixel_state(c, s, opts);
  for (torch::Tensor* t : {&s.tile_ranges, &s.pixel_state, &s.n_contrib}) uninitialized(*t);
  const int tiles = c.tiles_x() * c.tiles_y();
  s.tile_ranges.zero_();
  torch::Tensor keys = device_empty({pairs}, longs);
  torch::Tensor sorted_keys = device_empty({pairs}, longs);
  torch::Tensor ids = device_empty({pairs}, opts.dtype(torch::kInt32));
  s.point_list = device_empty({pairs}, opts.dtype(torch::kInt32));
  if (pairs > 0) {
    auto* k_in = reinterpret_cast<uint64_t*>(keys.data_ptr<int64_t>());
    auto* k_out = reinterpret_cast<uint64_t*>(sorted_keys.data_ptr<int64_t>());
    gpu::duplicate_keys(cam, int(P), st, offsets.data_ptr<int64_t>(), k_in, ids.data_ptr<int>(),
                         stream);
    check_stage(c, "duplicate_keys");
    const int end_bit = gpu::sort_end_bit(tiles);
    size_t bytes = 0;
    check_cub(gpu::sort_pairs(nullptr, bytes, k_in, k_out, ids.data_ptr<int>(),
                              s.point_list.data_ptr<int>(), int(pairs), end_bit, stream),
              "sort (sizing)");
    torch::Tensor temp = scratch(bytes, g.means3D);
    check_cub(gpu::sort_pairs(temp.data_ptr(), bytes, k_in, k_out, ids.data_ptr<int>(),
                              s.point_list.data_ptr<int>(), int(pairs), end_bit, stream),
              "sort");
    check_stage(c, "sort");
    gpu::identify_tile_ranges(k_out, int(pairs), s.tile_ranges.data_ptr<int>(), stream);
    check_stage(c, "tile_ranges");
  }

  torch::Tensor color = device_empty({3, H, W}, opts);
  torch::Tensor depth = device_empty({H, W}, opts);
  torch::Tensor weight = device_empty({H, W}, opts);
  torch::Tensor feature_map = device_empty({g.channels(), H, W}, opts);
  torch::Tensor median = device_empty({c.median_depth ? H : 0, W}, opts);
  const TileLists lists = {s.point_list.data_ptr<int>(), s.tile_ranges.data_ptr<int>()};
  gpu::render(cam, st, lists, make_pixel_buffers<float>(s, color, depth, weight),
              make_optional_outputs<float>(g, s, feature_map, median), stream);
  check_stage(c, "render");
  return {color, depth, weight, s.radii.clone(), feature_map, median, s.to_list()};
}

BackwardResult backward_cuda(const RasterConfig& c, const GaussianTensors& g, const ForwardState& s,
                             const MapGrads& up) {
  require_float32(g);
  const DeviceContext device(g.means3D);
  const cudaStream_t stream = device.stream;
  const int64_t P = g.count();
  GradientTensors grads = GradientTensors::zeros_like_inputs(g, c.camera_grad);
  const Camera<float> cam = make_camera<float>(c);
  const GaussianState<float> st = make_state<float>(s, nullptr, nullptr);
  const TileLists lists = {s.point_list.data_ptr<int>(), s.tile_ranges.data_ptr<int>()};
  const PixelGrads<float> pg = {data_or_null<float>(up.color), data_or_null<float>(up.depth),
                                data_or_null<float>(up.weight)};
  static_assert(sizeof(SplatGrad<float>) % sizeof(float) == 0, "SplatGrad must be floats");
  const int64_t splat_floats = int64_t(sizeof(SplatGrad<float>) / sizeof(float));
  torch::Tensor splat = torch::zeros({P, splat_floats}, g.means3D.options());
  auto* splat_grads = reinterpret_cast<SplatGrad<float>*>(splat.data_ptr<float>());

  gpu::render_backward(cam, st, lists, make_pixel_buffers<float>(s, {}, {}, {}), pg,
                       make_optional_grads<float>(g, s, up, grads), splat_grads, stream);
  check_stage(c, "render_backward");
  CameraGrad<float>* camera = grads.camera_pointer<float>();
  torch::Tensor partials;  // the camera gradient's per-block sums
  if (camera)
    partials = device_empty({int64_t(gpu::camera_grad_partials(int(P))), kCameraGradValues},
                            g.means3D.options());
  gpu::preprocess_backward(cam, make_inputs<float>(g), st.radii, splat_grads,
                            grads.pointers<float>(), camera,
                            camera ? reinterpret_cast<CameraGrad<float>*>(partials.data_ptr<float>())
                                   : nullptr,
                            stream);
  check_stage(c, "preprocess_backward");
  return grads.to_list();
}

torch::Tensor mark_visible_cuda(const torch::Tensor& positions, const torch::Tensor& viewmatrix) {
  TORCH_CHECK_TYPE(positions.scalar_type() == torch::kFloat32,
                   "positions: the CUDA backend takes float32, got ", positions.scalar_type());
  const DeviceContext device(positions);
  const int64_t P = positions.size(0);
  torch::Tensor visible = device_empty({P}, positions.options().dtype(torch::kBool));
  gpu::mark_visible(viewmatrix.data_ptr<float>(), positions.data_ptr<float>(), int(P),
                     visible.data_ptr<bool>(), device.stream);
  check_launch("mark_visible");
  return visible;
}

void set_cuda_tuning_cuda(bool warp_skip, bool scatter_reduce) {
  gpu::cuda_tuning() = {warp_skip, scatter_reduce};
}

}  // namespace dgrd
