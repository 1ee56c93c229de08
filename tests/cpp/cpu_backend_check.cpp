// Drives the CPU backend without PyTorch: a random SH-coloured scene rendered forward and backward
// on the eight lanes and on the per-pixel loop (forward bit for bit, gradients to float rounding),
// plain and with every optional output (feature channels, median depth, AbsGS's statistic), the
// lanes' results dumped for comparing two builds (GCC, MSVC).
// Usage: cpu_backend_check OUT_FILE [N=3000] [W=200] [H=150] [REPS=0] [SEED=20240611].
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "cuda_rasterizer/cpu_backend.h"

namespace {

using namespace dgrd;

constexpr int kShCoeffs = 16;  // SH degree 3
constexpr int kShValues = kShCoeffs * 3;

// splitmix64: the same integers from every standard library. Floats come from the top 24 bits
// (exact in a float) and are placed in a range in double, whose + and * round alike on every
// IEEE compiler that does not contract them (-ffp-contract=off; MSVC's /fp:precise).
struct Rng {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double unit() { return double(next() >> 40) * (1.0 / 16777216.0); }  // [0, 1)
  double range(double lo, double hi) { return lo + (hi - lo) * unit(); }
};

// The camera as the Python package builds it (cameras.py): an OpenCV world-to-camera matrix
// (x right, y down, z forward), viewmatrix = w2c^T and projmatrix = w2c^T P^T stored row-major,
// so that [p, 1] @ M maps a world point. Built in double, then rounded once to float.
struct CameraData {
  float view[16], proj[16], campos[3], background[3];
  double tanfovx, tanfovy, focal;
  double rotation[3][3], center[3];
  int width, height;

  Camera<float> camera() const {
    Camera<float> cam;
    cam.viewmatrix = view;
    cam.projmatrix = proj;
    cam.campos = campos;
    cam.background = background;
    cam.width = width;
    cam.height = height;
    cam.tiles_x = (width + kTileSize - 1) / kTileSize;
    cam.tiles_y = (height + kTileSize - 1) / kTileSize;
    cam.tanfovx = float(tanfovx);
    cam.tanfovy = float(tanfovy);
    // As rasterize_points.h's make_camera: focal = size / (2 tanfov), in double.
    cam.focal_x = float(width / (2.0 * tanfovx));
    cam.focal_y = float(height / (2.0 * tanfovy));
    cam.scale_modifier = 1.0f;
    cam.sh_degree = 3;
    cam.kernel_size = float(kDefaultKernelSize);
    cam.antialiasing = false;
    cam.inverse_depth = false;
    return cam;
  }
};

// A camera slightly turned and moved away from the origin (so that campos and the SH view
// directions are not trivial), square pixels, horizontal tan(fov/2) = 0.6. Only +, *, / and sqrt
// (correctly rounded everywhere): no library function whose last bit could differ.
CameraData make_camera_data(int width, int height) {
  CameraData c;
  c.width = width;
  c.height = height;
  c.tanfovx = 0.6;
  c.focal = width / (2.0 * c.tanfovx);
  c.tanfovy = height / (2.0 * c.focal);
  double q[4] = {1.0, 0.04, -0.06, 0.03};  // (w, x, y, z), normalized below
  const double norm = std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
  for (double& v : q) v /= norm;
  const double w = q[0], x = q[1], y = q[2], z = q[3];
  const double R[3][3] = {{1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)},
                          {2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)},
                          {2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)}};
  const double center[3] = {0.25, -0.15, -0.4};
  double w2c[4][4] = {};
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) w2c[i][j] = R[i][j];
    w2c[i][3] = -(R[i][0] * center[0] + R[i][1] * center[1] + R[i][2] * center[2]);
  }
  w2c[3][3] = 1.0;
  // cameras.py's perspective_matrix (column-vector form, z mapped forward).
  const double znear = 0.01, zfar = 100.0;
  double P[4][4] = {};
  P[0][0] = 1.0 / c.tanfovx;
  P[1][1] = 1.0 / c.tanfovy;
  P[2][2] = zfar / (zfar - znear);
  P[2][3] = -zfar * znear / (zfar - znear);
  P[3][2] = 1.0;
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      c.view[4 * i + j] = float(w2c[j][i]);  // (w2c^T)[i][j]
      double s = 0;                          // (w2c^T P^T)[i][j] = sum_k w2c[k][i] P[j][k]
      for (int k = 0; k < 4; ++k) s += w2c[k][i] * P[j][k];
      c.proj[4 * i + j] = float(s);
    }
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) c.rotation[i][j] = R[i][j];
    c.center[i] = center[i];
    c.campos[i] = float(center[i]);
  }
  c.background[0] = 0.1f;
  c.background[1] = 0.2f;
  c.background[2] = 0.3f;
  return c;
}

// The Gaussians' inputs, laid out as the Python package passes them.
struct Scene {
  int count = 0;
  std::vector<float> means3D, scales, rotations, opacities, shs;

  GaussianInputs<float> inputs() const {
    GaussianInputs<float> in;
    in.count = count;
    in.means3D = means3D.data();
    in.opacities = opacities.data();
    in.dc = nullptr;
    in.shs = shs.data();
    in.sh_coeffs = kShCoeffs;
    in.colors_precomp = nullptr;
    in.scales = scales.data();
    in.rotations = rotations.data();
    in.cov3D_precomp = nullptr;
    return in;
  }
};

// N Gaussians placed in view space (depth 2..10, spread 15% beyond the image's edges so that
// some are cut by them), then moved to the world; screen standard deviations of 1..10 pixels
// (radii of a few to about 30), anisotropic, randomly turned.
Scene make_scene(const CameraData& c, int count, Rng& rng) {
  Scene s;
  s.count = count;
  s.means3D.resize(size_t(count) * 3);
  s.scales.resize(size_t(count) * 3);
  s.rotations.resize(size_t(count) * 4);
  s.opacities.resize(size_t(count));
  s.shs.resize(size_t(count) * kShValues);
  for (int i = 0; i < count; ++i) {
    const double z = rng.range(2.0, 10.0);
    const double v[3] = {rng.range(-1.15, 1.15) * c.tanfovx * z,
                         rng.range(-1.15, 1.15) * c.tanfovy * z, z};
    // world = R^T (view - t) = R^T view + center, since t = -R center.
    for (int a = 0; a < 3; ++a) {
      double p = c.center[a];
      for (int b = 0; b < 3; ++b) p += c.rotation[b][a] * v[b];
      s.means3D[3 * size_t(i) + a] = float(p);
    }
    const double u = rng.unit();
    const double sigma = (1.0 + 9.0 * u * u) * z / c.focal;  // mostly small, a few large
    for (int a = 0; a < 3; ++a) s.scales[3 * size_t(i) + a] = float(sigma * rng.range(0.35, 1.0));
    // A uniformly random direction in 4D by rejection from the cube.
    double q[4], n2;
    do {
      n2 = 0;
      for (double& e : q) {
        e = rng.range(-1.0, 1.0);
        n2 += e * e;
      }
    } while (n2 < 0.01 || n2 > 1.0);
    const double n = std::sqrt(n2);
    for (int a = 0; a < 4; ++a) s.rotations[4 * size_t(i) + a] = float(q[a] / n);
    s.opacities[size_t(i)] = float(rng.range(0.05, 0.99));
    // Colour 0.5 + C0 dc + higher bands of decreasing strength (some channels clamp at 0).
    float* sh = s.shs.data() + size_t(i) * kShValues;
    for (int k = 0; k < kShCoeffs; ++k) {
      const double amplitude = k == 0 ? 1.6 : k < 4 ? 0.35 : k < 9 ? 0.2 : 0.12;
      for (int ch = 0; ch < 3; ++ch) sh[3 * k + ch] = float(rng.range(-amplitude, amplitude));
    }
  }
  return s;
}

// Deterministic upstream gradients of the three maps (depth's smaller: depths are larger).
struct Upstream {
  std::vector<float> color, depth, weight;
};

Upstream make_upstream(int plane, Rng& rng) {
  Upstream u;
  u.color.resize(size_t(plane) * 3);
  u.depth.resize(size_t(plane));
  u.weight.resize(size_t(plane));
  for (float& v : u.color) v = float(rng.range(-1.0, 1.0));
  for (float& v : u.depth) v = float(rng.range(-0.1, 0.1));
  for (float& v : u.weight) v = float(rng.range(-1.0, 1.0));
  return u;
}

// The optional outputs' inputs (feature channels, median depth, AbsGS's statistic): C values a
// Gaussian, and the upstream gradients of the feature map and the median. C = 11 takes the
// lanes' feature sums through a full group of eight channels and a tail.
struct Extras {
  int channels = 11;
  std::vector<float> features, feature_up, median_up;
};

Extras make_extras(int count, int plane, Rng& rng) {
  Extras e;
  e.features.resize(size_t(count) * e.channels);
  e.feature_up.resize(size_t(plane) * e.channels);
  e.median_up.resize(size_t(plane));
  for (float& v : e.features) v = float(rng.range(-1.0, 1.0));
  for (float& v : e.feature_up) v = float(rng.range(-1.0, 1.0));
  for (float& v : e.median_up) v = float(rng.range(-0.1, 0.1));
  return e;
}

// What the forward leaves: the Gaussians' state, the tile lists, the maps and the saved pixel
// state, allocated as rasterize_points.cpp's forward_cpu does.
struct Forward {
  std::vector<int> radii;
  std::vector<Vec2<float>> means2d;
  std::vector<Vec4<float>> conic_opacity, features;
  std::vector<int64_t> tiles_touched;
  std::vector<TileRect> rects;
  std::vector<int> point_list, tile_ranges;
  std::vector<float> color, depth, weight, pixel_state;
  std::vector<int> n_contrib;
  std::vector<float> feature_map, median;  // with Extras
  std::vector<int> median_contrib;

  GaussianState<float> state(bool with_scratch) {
    return {radii.data(),
            means2d.data(),
            conic_opacity.data(),
            features.data(),
            with_scratch ? tiles_touched.data() : nullptr,
            with_scratch ? rects.data() : nullptr};
  }
  TileLists lists() const { return {point_list.data(), tile_ranges.data()}; }
};

// extras: null for the plain call, else the optional outputs are rendered too.
Forward run_forward(const Camera<float>& cam, const Scene& scene, const Extras* extras) {
  const int P = scene.count;
  const int plane = cam.width * cam.height;
  Forward f;
  f.radii.resize(size_t(P));
  f.means2d.resize(size_t(P));
  f.conic_opacity.resize(size_t(P));
  f.features.resize(size_t(P));
  f.tiles_touched.assign(size_t(P), 0);
  f.rects.resize(size_t(P));
  const GaussianState<float> st = f.state(true);
  cpu::preprocess(cam, scene.inputs(), st);
  int64_t pairs = 0;
  for (const int64_t t : f.tiles_touched) pairs += t;
  f.point_list.resize(size_t(pairs));
  f.tile_ranges.resize(size_t(cam.tiles_x) * cam.tiles_y * 2);
  cpu::bin_gaussians(cam, P, st, f.point_list.data(), f.tile_ranges.data());
  // NaN and -1 where the render must write: a tile it skipped shows up in the checks (under
  // wine 8's builtin vcomp140, schedule(dynamic, 1) loops run only some of their iterations).
  const float unwritten = std::numeric_limits<float>::quiet_NaN();
  f.color.assign(size_t(plane) * 3, unwritten);
  f.depth.assign(size_t(plane), unwritten);
  f.weight.assign(size_t(plane), unwritten);
  f.pixel_state.assign(size_t(plane) * 3, unwritten);
  f.n_contrib.assign(size_t(plane), -1);
  const PixelBuffers<float> px = {f.color.data(), f.depth.data(), f.weight.data(),
                                  f.pixel_state.data(), f.n_contrib.data()};
  OptionalOutputs<float> optional = {0, nullptr, nullptr, nullptr, nullptr};
  if (extras) {
    f.feature_map.assign(size_t(plane) * extras->channels, unwritten);
    f.median.assign(size_t(plane), unwritten);
    f.median_contrib.assign(size_t(plane), -1);
    optional = {extras->channels, extras->features.data(), f.feature_map.data(), f.median.data(),
                f.median_contrib.data()};
  }
  cpu::render(cam, st, P, f.lists(), px, optional);
  return f;
}

// The backward's results: the splat gradients the render backward hands over, and the inputs'
// gradients (zeros where a Gaussian was culled, as the glue's zero-filled tensors).
struct Backward {
  std::vector<SplatGrad<float>> splat;
  std::vector<float> means3D, means2D, opacities, shs, scales, rotations;
  CameraGrad<float> camera;
  std::vector<float> features;             // with Extras
  std::vector<Vec2<float>> mean2d_abs;
};

Backward run_backward(const Camera<float>& cam, const Scene& scene, Forward& f,
                      const Upstream& up, const Extras* extras) {
  const int P = scene.count;
  Backward b;
  // The render backward writes all P entries: NaN shows any it left.
  const float unwritten = std::numeric_limits<float>::quiet_NaN();
  const SplatGrad<float> nan_grad = {{unwritten, unwritten},
                                     {unwritten, unwritten, unwritten},
                                     unwritten,
                                     {unwritten, unwritten, unwritten, unwritten}};
  b.splat.assign(size_t(P), nan_grad);
  b.means3D.assign(size_t(P) * 3, 0.f);
  b.means2D.assign(size_t(P) * 3, 0.f);
  b.opacities.assign(size_t(P), 0.f);
  b.shs.assign(size_t(P) * kShValues, 0.f);
  b.scales.assign(size_t(P) * 3, 0.f);
  b.rotations.assign(size_t(P) * 4, 0.f);
  std::memset(static_cast<void*>(&b.camera), 0, sizeof(b.camera));
  const GaussianState<float> st = f.state(false);
  // As backward_cpu: the backward reads only the saved pixel state and the list positions.
  const PixelBuffers<float> px = {nullptr, nullptr, nullptr, f.pixel_state.data(),
                                  f.n_contrib.data()};
  const PixelGrads<float> pg = {up.color.data(), up.depth.data(), up.weight.data()};
  OptionalGrads<float> optional = {0, nullptr, nullptr, nullptr, nullptr, nullptr};
  if (extras) {
    b.features.assign(size_t(P) * extras->channels, unwritten);  // all written
    b.mean2d_abs.assign(size_t(P), Vec2<float>{0.f, 0.f});       // summed into
    optional = {extras->channels, extras->features.data(), f.median_contrib.data(),
                extras->feature_up.data(), extras->median_up.data(), b.features.data()};
    optional.mean2d_abs = b.mean2d_abs.data();
  }
  cpu::render_backward(cam, st, f.lists(), px, pg, optional, P, b.splat.data());
  const GaussianGrads<float> out = {b.means3D.data(), b.means2D.data(), b.opacities.data(),
                                    nullptr,          b.shs.data(),     nullptr,
                                    b.scales.data(),  b.rotations.data(), nullptr};
  cpu::preprocess_backward(cam, scene.inputs(), f.radii.data(), b.splat.data(), out, &b.camera);
  return b;
}

// One named array of results, as floats (integers converted exactly: all are below 2^24).
struct Array {
  std::string name;
  std::vector<float> values;
};

template <typename V>
Array as_floats(const char* name, const V* data, size_t count) {
  Array a{name, std::vector<float>(count)};
  for (size_t k = 0; k < count; ++k) a.values[k] = float(data[k]);
  return a;
}

// Every result of one forward and backward, in the order of the dump. Only the first `dumped`
// go to the file: the rest (list positions, saved state, splat gradients) are compared alone.
std::vector<Array> collect(const Forward& f, const Backward& b, size_t& dumped) {
  std::vector<Array> r;
  r.push_back(as_floats("color", f.color.data(), f.color.size()));
  r.push_back(as_floats("depth", f.depth.data(), f.depth.size()));
  r.push_back(as_floats("weight", f.weight.data(), f.weight.size()));
  r.push_back(as_floats("radii", f.radii.data(), f.radii.size()));
  r.push_back(as_floats("grad_means3D", b.means3D.data(), b.means3D.size()));
  r.push_back(as_floats("grad_means2D", b.means2D.data(), b.means2D.size()));
  r.push_back(as_floats("grad_opacities", b.opacities.data(), b.opacities.size()));
  r.push_back(as_floats("grad_shs", b.shs.data(), b.shs.size()));
  r.push_back(as_floats("grad_scales", b.scales.data(), b.scales.size()));
  r.push_back(as_floats("grad_rotations", b.rotations.data(), b.rotations.size()));
  static_assert(sizeof(CameraGrad<float>) == kCameraGradValues * sizeof(float),
                "CameraGrad layout");
  float camera[kCameraGradValues];  // viewmatrix (16), projmatrix (16), campos (3)
  std::memcpy(camera, &b.camera, sizeof(camera));
  r.push_back(as_floats("grad_camera", camera, size_t(kCameraGradValues)));
  dumped = r.size();
  r.push_back(as_floats("pixel_state", f.pixel_state.data(), f.pixel_state.size()));
  r.push_back(as_floats("n_contrib", f.n_contrib.data(), f.n_contrib.size()));
  // Field by field: the Vec4 inside is aligned, so the struct has padding.
  std::vector<float> splat;
  splat.reserve(b.splat.size() * kSplatGradValues);
  for (const SplatGrad<float>& g : b.splat)
    for (const float v : {g.mean2d.x, g.mean2d.y, g.conic.a, g.conic.b, g.conic.c, g.opacity,
                          g.feature.x, g.feature.y, g.feature.z, g.feature.w})
      splat.push_back(v);
  r.push_back(as_floats("splat_grads", splat.data(), splat.size()));
  return r;
}

// The optional outputs of a run with Extras, and their gradients.
std::vector<Array> collect_extras(const Forward& f, const Backward& b) {
  std::vector<float> abs_sums;
  for (const Vec2<float>& v : b.mean2d_abs)
    for (const float x : {v.x, v.y}) abs_sums.push_back(x);
  return {as_floats("feature_map", f.feature_map.data(), f.feature_map.size()),
          as_floats("median_depth", f.median.data(), f.median.size()),
          as_floats("median_contrib", f.median_contrib.data(), f.median_contrib.size()),
          as_floats("grad_features", b.features.data(), b.features.size()),
          as_floats("grad_means2D_abs", abs_sums.data(), abs_sums.size())};
}

// How the lanes' array compares with the per-pixel loop's.
struct Agreement {
  size_t values = 0, differing = 0;
  bool ok = true;
};

// The forward (maps, radii, saved state, list positions) must hold the same bits. The gradients
// are the same terms summed in another order (per lane, then across lanes, in double: see
// render_backward_lanes against render_pixels_backward), so they are held to the tolerance of
// tests/test_cpu_fast_path.py's assert_lane_grads_close instead: |a - b| <= 1e-5 |b| + 1e-5
// max |b|; the number of values that differ at all is printed. Prints the first difference.
Agreement compare(const Array& a, const Array& b, bool exact) {
  Agreement r;
  r.values = a.values.size();
  if (a.values.size() != b.values.size()) {
    std::printf("MISMATCH %s: %zu values on the lanes, %zu on the per-pixel loop\n",
                a.name.c_str(), a.values.size(), b.values.size());
    r.ok = false;
    return r;
  }
  if (a.values.empty() ||
      std::memcmp(a.values.data(), b.values.data(), a.values.size() * sizeof(float)) == 0) {
    if (!exact) std::printf("  %-16s %zu values, all bit-identical\n", a.name.c_str(), r.values);
    return r;
  }
  double scale = 0;
  for (const float v : b.values) scale = std::max(scale, std::fabs(double(v)));
  size_t first = 0, first_beyond = 0, beyond = 0;
  double largest = 0, largest_relative = 0;
  for (size_t k = 0; k < a.values.size(); ++k) {
    if (std::memcmp(&a.values[k], &b.values[k], sizeof(float)) == 0) continue;
    if (r.differing++ == 0) first = k;
    const double diff = std::fabs(double(a.values[k]) - double(b.values[k]));
    largest = std::max(largest, diff);
    if (b.values[k] != 0.f)
      largest_relative = std::max(largest_relative, diff / std::fabs(double(b.values[k])));
    if (!(diff <= 1e-5 * std::fabs(double(b.values[k])) + 1e-5 * scale)) {  // NaN fails too
      if (beyond++ == 0) first_beyond = k;
    }
  }
  if (!exact && beyond == 0) {
    std::printf("  %-16s %zu values, %zu differ in the last bits (largest %.3g, relative %.3g of"
                " max %.3g)\n",
                a.name.c_str(), r.values, r.differing, largest, largest / scale, scale);
    return r;
  }
  r.ok = false;
  const size_t k = exact ? first : first_beyond;
  std::printf("MISMATCH %s: %zu of %zu values differ%s, first at %zu: lanes %.9g, per-pixel %.9g;"
              " largest difference %.3g (relative to the value %.3g)\n",
              a.name.c_str(), exact ? r.differing : beyond, r.values,
              exact ? "" : " beyond the tolerance", k, double(a.values[k]), double(b.values[k]),
              largest, largest_relative);
  return r;
}

void put_bytes(std::ofstream& out, uint64_t v, int bytes) {
  char b[8];
  for (int k = 0; k < bytes; ++k) b[k] = char((v >> (8 * k)) & 0xffu);  // little-endian
  out.write(b, bytes);
}

// Records: uint32 name length, the name, uint64 count, count float32 values; nothing else.
bool write_dump(const char* path, const std::vector<Array>& arrays) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return false;
  for (const Array& a : arrays) {
    put_bytes(out, uint64_t(a.name.size()), 4);
    out.write(a.name.data(), std::streamsize(a.name.size()));
    put_bytes(out, uint64_t(a.values.size()), 8);
    for (const float v : a.values) {
      uint32_t bits;
      std::memcpy(&bits, &v, sizeof(bits));
      put_bytes(out, bits, 4);
    }
  }
  out.close();
  return !out.fail();
}

// The checks a correct render passes whatever its path: every value written and finite, weights
// in [0, 1], some pixels covered, some non-zero gradient in each gradient array.
bool sane(const std::vector<Array>& arrays, const char* path) {
  bool ok = true;
  for (const Array& a : arrays) {
    size_t bad = 0, nonzero = 0;
    for (const float v : a.values) {
      if (!std::isfinite(v)) ++bad;
      if (v != 0.f) ++nonzero;
    }
    if (bad > 0) {
      std::printf("FAIL %s (%s): %zu non-finite (or unwritten) values\n", a.name.c_str(), path,
                  bad);
      ok = false;
    }
    if ((a.name == "n_contrib" || a.name == "median_contrib") &&
        *std::min_element(a.values.begin(), a.values.end()) < 0.f) {
      std::printf("FAIL %s (%s): pixels the render did not write\n", a.name.c_str(), path);
      ok = false;
    }
    if (a.name.compare(0, 5, "grad_") == 0 && nonzero == 0) {
      std::printf("FAIL %s (%s): all zero\n", a.name.c_str(), path);
      ok = false;
    }
    if (a.name == "weight") {
      float lo = 1.f, hi = 0.f;  // over the finite values (the others failed above)
      size_t covered = 0;
      for (const float v : a.values) {
        if (!std::isfinite(v)) continue;
        lo = std::min(lo, v);
        hi = std::max(hi, v);
        if (v > 0.5f) ++covered;
      }
      std::printf("%s: weight in [%.9g, %.9g], %zu of %zu pixels above 0.5\n", path, double(lo),
                  double(hi), covered, a.values.size());
      if (!(lo >= 0.f && hi <= 1.f)) {
        std::printf("FAIL weight (%s): outside [0, 1]\n", path);
        ok = false;
      }
      if (covered == 0) {
        std::printf("FAIL weight (%s): no pixel covered (weight > 0.5)\n", path);
        ok = false;
      }
    }
  }
  return ok;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double elapsed_ms(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - since)
      .count();
}

// Parses a non-negative integer argument, or exits with status 2.
int count_argument(const char* text, const char* what) {
  char* end = nullptr;
  const long v = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || v < 0 || v > 1000000000L) {
    std::fprintf(stderr, "cpu_backend_check: %s: expected a non-negative integer, got '%s'\n",
                 what, text);
    std::exit(2);
  }
  return int(v);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 7) {
    std::fprintf(stderr,
                 "usage: cpu_backend_check OUT_FILE [N=3000] [W=200] [H=150] [REPS=0] [SEED]\n");
    return 2;
  }
  const char* out_path = argv[1];
  const int N = argc > 2 ? count_argument(argv[2], "N") : 3000;
  const int W = argc > 3 ? count_argument(argv[3], "W") : 200;
  const int H = argc > 4 ? count_argument(argv[4], "H") : 150;
  const int reps = argc > 5 ? count_argument(argv[5], "REPS") : 0;
  const uint64_t seed = argc > 6 ? uint64_t(count_argument(argv[6], "SEED")) : 20240611u;
  if (N < 1 || W < 1 || H < 1) {
    std::fprintf(stderr, "cpu_backend_check: N, W and H must be positive\n");
    return 2;
  }

  const CameraData cd = make_camera_data(W, H);
  const Camera<float> cam = cd.camera();
  Rng rng{seed};
  const Scene scene = make_scene(cd, N, rng);
  const Upstream up = make_upstream(W * H, rng);

  cpu::CpuTuning& tuning = cpu::cpu_tuning();
  tuning.power_bound = true;

  if (!cpu::lanes_run_here())
    std::printf("this CPU cannot run this build's lanes (AVX2): both runs are the per-pixel loop\n");
#if defined(__GNUC__) && defined(__x86_64__)
  // What GCC's clone resolvers read (tests/test_cpu_fast_path.py runs this under CPU models).
  std::printf("cpu: avx2 %d avx512f %d\n", __builtin_cpu_supports("avx2") ? 1 : 0,
              __builtin_cpu_supports("avx512f") ? 1 : 0);
#endif
  // The plain call, then one with every optional output (their random inputs drawn after the
  // plain call's, which stay those of earlier versions of this program).
  const Extras extras = make_extras(N, W * H, rng);
  tuning.lanes = true;
  Forward f_lanes = run_forward(cam, scene, nullptr);
  const Backward b_lanes = run_backward(cam, scene, f_lanes, up, nullptr);
  Forward fx_lanes = run_forward(cam, scene, &extras);
  const Backward bx_lanes = run_backward(cam, scene, fx_lanes, up, &extras);
  tuning.lanes = false;
  Forward f_pixels = run_forward(cam, scene, nullptr);
  const Backward b_pixels = run_backward(cam, scene, f_pixels, up, nullptr);
  Forward fx_pixels = run_forward(cam, scene, &extras);
  const Backward bx_pixels = run_backward(cam, scene, fx_pixels, up, &extras);
  tuning.lanes = true;

  int visible = 0;
  for (const int r : f_lanes.radii) visible += r > 0;
  std::printf("visible Gaussians %d of %d, tile pairs %zu, tiles %dx%d\n", visible, N,
              f_lanes.point_list.size(), cam.tiles_x, cam.tiles_y);

  size_t dumped = 0;
  std::vector<Array> lanes = collect(f_lanes, b_lanes, dumped);
  std::vector<Array> pixels = collect(f_pixels, b_pixels, dumped);
  // The dump: the plain call's results, then the optional outputs and their gradients.
  std::vector<Array> dump(lanes.begin(), lanes.begin() + std::ptrdiff_t(dumped));
  for (const Array& a : collect_extras(fx_lanes, bx_lanes)) {
    lanes.push_back(a);
    dump.push_back(a);
  }
  for (const Array& a : collect_extras(fx_pixels, bx_pixels)) pixels.push_back(a);
  // Gradients: the inputs' (grad_*) and the render backward's (splat_grads); the rest is forward.
  const auto is_gradient = [](const Array& a) {
    return a.name.compare(0, 5, "grad_") == 0 || a.name == "splat_grads";
  };
  bool agree = true;
  size_t exact_arrays = 0, gradient_arrays = 0, gradient_values = 0, gradient_differing = 0;
  std::printf("gradients, lanes against the per-pixel loop:\n");
  for (size_t i = 0; i < lanes.size(); ++i) {
    const bool exact = !is_gradient(lanes[i]);
    const Agreement r = compare(lanes[i], pixels[i], exact);
    agree = agree && r.ok;
    if (exact) {
      ++exact_arrays;
    } else {
      ++gradient_arrays;
      gradient_values += r.values;
      gradient_differing += r.differing;
    }
  }
  const bool lanes_ok = sane(lanes, "lanes"), pixels_ok = sane(pixels, "per-pixel loop");
  const bool ok = lanes_ok && pixels_ok;
  if (!agree) {
    std::printf("cpu_backend_check: the lanes and the per-pixel loop disagree\n");
    return 1;
  }
  if (!ok) {
    std::printf("cpu_backend_check: sanity checks failed\n");
    return 1;
  }
  if (!write_dump(out_path, dump)) {
    std::printf("cpu_backend_check: cannot write %s\n", out_path);
    return 1;
  }

  if (reps > 0) {
    for (const bool on : {true, false}) {
      tuning.lanes = on;
      std::vector<double> forward_ms, both_ms;
      for (int r = 0; r < reps; ++r) {
        const auto start = std::chrono::steady_clock::now();
        run_forward(cam, scene, nullptr);
        forward_ms.push_back(elapsed_ms(start));
      }
      for (int r = 0; r < reps; ++r) {
        const auto start = std::chrono::steady_clock::now();
        Forward f = run_forward(cam, scene, nullptr);
        run_backward(cam, scene, f, up, nullptr);
        both_ms.push_back(elapsed_ms(start));
      }
      std::printf("forward lanes=%d %.3f ms\n", int(on), median(forward_ms));
      std::printf("forward+backward lanes=%d %.3f ms\n", int(on), median(both_ms));
    }
    tuning.lanes = true;
  }

  std::printf("cpu_backend_check: N=%d %dx%d seed %llu: lanes and per-pixel loop agree bit for "
              "bit on the forward (%zu arrays) and within float rounding on the gradients (%zu "
              "arrays, %zu of %zu values bit-identical); wrote %s\n",
              N, W, H, (unsigned long long)seed, exact_arrays, gradient_arrays,
              gradient_values - gradient_differing, gradient_values, out_path);
  return 0;
}
