// The fused SSIM on the CPU (the window's two separable passes, OpenMP over rows) and the
// dispatch by device.
#include "fused_ssim.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <vector>

namespace dgrd {

namespace {

// Below this many pixels a plane's passes run on one thread (OpenMP's start-up costs more).
constexpr int64_t kMinParallelPixels = 4096;

// Blurs K per-pixel products of one plane with the SSIM window, zero beyond the image.
// products(y, x, out) writes the K products at a pixel; emit(y, x0, count, blurred) takes the
// blurred values of `count` pixels of row y from x0 on, product k of pixel x0 + i at
// blurred[k * count + i]. Called inside an OpenMP parallel region (the loops are shared out
// among its threads; the barrier between the passes is the first loop's). `columns` holds the
// rows' horizontal sums, K planes of (height + 2 radius) rows whose first and last `radius`
// rows are zero, so the vertical pass needs no bounds check.
template <int K, typename T, typename Products, typename Emit>
void blur_plane(int height, int width, const Products& products, const Emit& emit,
                std::vector<T>& columns) {
  const int64_t padded_rows = height + 2 * kSsimRadius;
  const int64_t column_plane = padded_rows * width;
  const int padded_width = width + 2 * kSsimRadius;
  std::vector<T> row(static_cast<size_t>(K) * padded_width, T(0));  // this thread's padded products
  std::vector<T> blurred(static_cast<size_t>(K) * width);
  T at_pixel[K];
#pragma omp for schedule(static)
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      products(y, x, at_pixel);
      for (int k = 0; k < K; ++k) row[size_t(k) * padded_width + kSsimRadius + x] = at_pixel[k];
    }
    for (int k = 0; k < K; ++k) {
      const T* in = row.data() + size_t(k) * padded_width + kSsimRadius;
      T* out = columns.data() + k * column_plane + int64_t(y + kSsimRadius) * width;
      for (int x = 0; x < width; ++x)
        out[x] = window_sum<T>([&](int d) { return in[x + d]; });
    }
  }
#pragma omp for schedule(static)
  for (int y = 0; y < height; ++y) {
    for (int k = 0; k < K; ++k) {
      const T* in = columns.data() + k * column_plane + int64_t(y + kSsimRadius) * width;
      T* out = blurred.data() + size_t(k) * width;
      for (int x = 0; x < width; ++x)
        out[x] = window_sum<T>([&](int d) { return in[int64_t(d) * width + x]; });
    }
    emit(y, 0, width, blurred.data());
  }
}

// The zero rows above and below the horizontal sums, for K products.
template <int K, typename T>
std::vector<T> column_buffer(int height, int width) {
  return std::vector<T>(size_t(K) * (height + 2 * kSsimRadius) * width, T(0));
}

// One blur of K products of every plane, then each pixel's store(at, its K blurred values).
template <int K, typename T, typename Products, typename Store>
void blur_planes(const SsimImages<T>& im, const Products& products, const Store& store) {
  const int64_t n = im.plane_size();
  std::vector<T> columns = column_buffer<K, T>(im.height, im.width);
  for (int64_t p = 0; p < im.planes; ++p) {
    const auto plane_products = [&](int y, int x, T* v) {
      products(p * n + int64_t(y) * im.width + x, v);
    };
    const auto emit = [&](int y, int x0, int count, const T* blurred) {
      T m[K];
      for (int i = 0; i < count; ++i) {
        for (int k = 0; k < K; ++k) m[k] = blurred[k * count + i];
        store(p * n + int64_t(y) * im.width + x0 + i, m);
      }
    };
#pragma omp parallel if (n >= kMinParallelPixels)
    blur_plane<K, T>(im.height, im.width, plane_products, emit, columns);
  }
}

template <typename T>
void ssim_forward_cpu(const SsimImages<T>& im, const SsimForwardOut<T>& out) {
  const int64_t all = im.planes * im.plane_size();
  blur_planes<kSsimMoments>(
      im, [&](int64_t at, T* v) { forward_products(im, at, v); },
      [&](int64_t at, const T* m) { store_forward(im, out, all, at, m); });
}

// K: the partials the forward kept (3: the first image's gradient alone; 4: both).
template <int K, typename T>
void ssim_backward_cpu(const SsimImages<T>& im, const SsimBackwardIn<T>& in) {
  const int64_t all = im.planes * im.plane_size();
  blur_planes<K>(
      im, [&](int64_t at, T* v) { backward_products<K>(in, all, at, v); },
      [&](int64_t at, const T* m) { store_backward<K>(im, in, at, m); });
}

void check_images(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.dim() == 3 && a.is_contiguous() && a.is_floating_point(),
              "fused SSIM: the images must be contiguous 3-D (planes, H, W) floating tensors");
  TORCH_CHECK(b.sizes() == a.sizes() && b.is_contiguous() &&
                  b.scalar_type() == a.scalar_type() && b.device() == a.device(),
              "fused SSIM: the second image must be contiguous, of the first's shape, dtype "
              "and device");
  TORCH_CHECK(a.size(1) <= (int64_t(1) << 30) && a.size(2) <= (int64_t(1) << 30),
              "fused SSIM: images at most 2^30 pixels on a side");
}

}  // namespace

SsimTensors SsimTensors::forward(const at::Tensor& a, const at::Tensor& b, int64_t partials) {
  check_images(a, b);
  TORCH_CHECK(partials == 0 || partials == kSsimPartialsOfA || partials == kSsimPartials,
              "fused SSIM: 0, 3 or 4 partials, got ", partials);
  return {at::empty_like(a), partials ? at::empty({partials, a.size(0), a.size(1), a.size(2)},
                                                  a.options())
                                      : at::empty({0}, a.options())};
}

SsimTensors SsimTensors::backward(const at::Tensor& a, const at::Tensor& b,
                                  const at::Tensor& grad_map, const at::Tensor& partials,
                                  bool need_a, bool need_b) {
  check_images(a, b);
  TORCH_CHECK(grad_map.sizes() == a.sizes() && grad_map.is_contiguous() &&
                  grad_map.scalar_type() == a.scalar_type() && grad_map.device() == a.device(),
              "fused SSIM: the map's gradient must be contiguous, of the images' shape, dtype "
              "and device");
  TORCH_CHECK(partials.dim() == 4 &&
                  partials.size(0) == (need_b ? kSsimPartials : partials.size(0)) &&
                  (partials.size(0) == kSsimPartials || partials.size(0) == kSsimPartialsOfA) &&
                  partials.size(1) == a.size(0) && partials.size(2) == a.size(1) &&
                  partials.size(3) == a.size(2) && partials.is_contiguous() &&
                  partials.scalar_type() == a.scalar_type() && partials.device() == a.device(),
              "fused SSIM: the backward needs the partials its forward kept");
  const auto maybe = [&](bool need) {
    return need ? at::empty_like(a) : at::empty({0}, a.options());
  };
  return {maybe(need_a), maybe(need_b)};
}

std::tuple<at::Tensor, at::Tensor> ssim_forward(const at::Tensor& a, const at::Tensor& b,
                                                double c1, double c2, int64_t partials) {
  if (a.is_cuda()) {
#ifdef DGRD_WITH_CUDA
    return ssim_forward_cuda(a, b, c1, c2, partials);
#else
    TORCH_CHECK(false, "diff_gaussian_rasterization_depth was built without CUDA");
#endif
  }
  const SsimTensors out = SsimTensors::forward(a, b, partials);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "ssim_forward", [&] {
    ssim_forward_cpu(SsimTensors::images<scalar_t>(a, b, c1, c2), out.forward_out<scalar_t>());
  });
  return {out.first, out.second};
}

std::tuple<at::Tensor, at::Tensor> ssim_backward(const at::Tensor& a, const at::Tensor& b,
                                                 const at::Tensor& grad_map,
                                                 const at::Tensor& partials, bool need_a,
                                                 bool need_b) {
  if (a.is_cuda()) {
#ifdef DGRD_WITH_CUDA
    return ssim_backward_cuda(a, b, grad_map, partials, need_a, need_b);
#else
    TORCH_CHECK(false, "diff_gaussian_rasterization_depth was built without CUDA");
#endif
  }
  const SsimTensors out = SsimTensors::backward(a, b, grad_map, partials, need_a, need_b);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "ssim_backward", [&] {
    const auto images = SsimTensors::images<scalar_t>(a, b, 0.0, 0.0);
    const auto in = out.backward_in<scalar_t>(grad_map, partials);
    if (partials.size(0) == kSsimPartials) {
      ssim_backward_cpu<kSsimPartials>(images, in);
    } else {
      ssim_backward_cpu<kSsimPartialsOfA>(images, in);
    }
  });
  return {out.first, out.second};
}

}  // namespace dgrd
