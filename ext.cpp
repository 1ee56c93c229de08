// Python bindings of the _C module.
// pybind11 and PyTorch's tensor conversions alone, not torch/extension.h: see rasterize_points.h.
#include <torch/csrc/autograd/python_variable.h>  // THPVariable_Unpack
#include <torch/csrc/utils/pybind.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <optional>

#include "bindings.h"
#include "fused_ssim.h"
#include "mcmc.h"
#include "rasterize_points.h"
#include "sparse_adam.h"

namespace {

using dgrd::RasterConfig;

// The common call's checks, in C++: `check_common` below. Each helper answers whether a Python
// value is of the plain kind the Python checks (_validation.py) accept; anything else, however
// valid, is left to them.

// A Python int (not a bool) in lo..hi.
bool int_in(PyObject* v, int64_t lo, int64_t hi, int64_t& out) {
  if (!PyLong_CheckExact(v)) return false;
  int overflow = 0;
  const long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
  if (overflow != 0 || (x == -1 && PyErr_Occurred())) {
    PyErr_Clear();
    return false;
  }
  out = x;
  return x >= lo && x <= hi;
}

// A finite Python float or int (as float() converts it), positive when asked.
bool real(PyObject* v, bool positive, double& out) {
  if (PyFloat_CheckExact(v)) {
    out = PyFloat_AS_DOUBLE(v);
  } else if (PyLong_CheckExact(v)) {
    out = PyLong_AsDouble(v);
    if (out == -1.0 && PyErr_Occurred()) {  // past a double's range
      PyErr_Clear();
      return false;
    }
  } else {
    return false;
  }
  return std::isfinite(out) && (!positive || out > 0);
}

bool flag(PyObject* v, bool& out) {  // a Python bool
  if (!PyBool_Check(v)) return false;
  out = v == Py_True;
  return true;
}

// v as a strided tensor, exactly torch.Tensor or nn.Parameter, or nullptr (None included): a
// subclass may answer the Python checks' questions otherwise (__torch_function__), and an
// object may claim to be a tensor through __class__ alone. It lives as long as v.
const at::Tensor* tensor(PyObject* v) {
  if (!THPVariable_CheckExact(v)) return nullptr;
  const at::Tensor& t = THPVariable_Unpack(v);
  return t.layout() == at::kStrided ? &t : nullptr;
}

// v as a tensor of like's device and dtype whose sizes are `sizes` (-1: any), or nullptr.
const at::Tensor* shaped_like(PyObject* v, const at::Tensor& like,
                              std::initializer_list<int64_t> sizes) {
  const at::Tensor* t = tensor(v);
  if (t == nullptr || t->device() != like.device() || t->scalar_type() != like.scalar_type() ||
      t->dim() != int64_t(sizes.size()))
    return nullptr;
  int64_t d = 0;
  for (int64_t want : sizes) {
    if (want >= 0 && t->size(d) != want) return nullptr;
    ++d;
  }
  return t;
}

// A settings attribute (new reference), or null where reading it raises an Exception (the
// Python checks will say what); KeyboardInterrupt and the like go on.
py::object field(py::handle settings, const char* name) {
  PyObject* v = PyObject_GetAttrString(settings.ptr(), name);
  if (v == nullptr) {
    if (!PyErr_ExceptionMatches(PyExc_Exception)) throw py::error_already_set();
    PyErr_Clear();
  }
  return py::reinterpret_steal<py::object>(v);
}

// Lens coefficients given as plain numbers: a tuple or list of `counts` finite Python floats or
// ints, padded with zeros to `out`'s size. False for anything else (a tensor, another count, a
// non-finite value): the Python checks take those.
bool coefficients(const py::object& v, std::initializer_list<size_t> counts, double* out,
                  size_t size) {
  if (!PyTuple_CheckExact(v.ptr()) && !PyList_CheckExact(v.ptr())) return false;
  const py::sequence seq = py::reinterpret_borrow<py::sequence>(v);
  const size_t n = seq.size();
  if (std::find(counts.begin(), counts.end(), n) == counts.end() || n > size) return false;
  for (size_t i = 0; i < size; ++i) {
    out[i] = 0;
    if (i < n && !real(seq[i].ptr(), false, out[i])) return false;
  }
  return true;
}

// A lens's fold from the Python checks' own function `name` of _validation (its lru_cache
// remembers the last lenses), so that both paths cull at the same value.
double lens_fold(const char* name, const double* k, size_t size) {
  static const py::handle module =
      py::module_::import("diff_gaussian_rasterization_depth._validation").release();
  py::tuple numbers(size);
  for (size_t i = 0; i < size; ++i) numbers[i] = py::float_(k[i]);
  return module.attr(name)(numbers).cast<double>();
}

// The settings' lens coefficients into c: none (None, or all zeros, as the Python checks
// read them), else the coefficients and their fold. False where the Python checks must read
// them (a tensor, which may take a gradient; anything they refuse).
bool lens_coefficients(py::handle settings, RasterConfig& c) {
  const py::object fisheye_k = field(settings, "fisheye_distortion");
  if (fisheye_k && !fisheye_k.is_none()) {
    if (!c.fisheye || !coefficients(fisheye_k, {4}, c.fisheye_k, 4)) return false;
    c.fisheye_distorted = std::any_of(c.fisheye_k, c.fisheye_k + 4, [](double v) { return v; });
    if (c.fisheye_distorted) c.fisheye_max_angle = lens_fold("fisheye_fold_angle", c.fisheye_k, 4);
  }
  const py::object pinhole_k = field(settings, "pinhole_distortion");
  if (pinhole_k && !pinhole_k.is_none()) {
    if (c.fisheye || c.orthographic ||
        !coefficients(pinhole_k, {4, 5, 8}, c.pinhole_k, dgrd::kLensCoefficients))
      return false;
    c.pinhole_distorted = std::any_of(c.pinhole_k, c.pinhole_k + dgrd::kLensCoefficients,
                                      [](double v) { return v; });
    if (c.pinhole_distorted)
      c.pinhole_max_u = lens_fold("pinhole_fold_u", c.pinhole_k, dgrd::kLensCoefficients);
  }
  return true;
}

// The call of `rasterize_gaussians` checked in one C++ call where it is the common one: plain
// Python numbers and bools in the settings, debug off, no gradient to the camera or background,
// every tensor of the shapes, device and dtype the Python checks ask for. Returns (opacities
// as (P, 1), the RasterConfig with the camera's private copy) as they would, or None: then
// they check the call again and say what is wrong. Why in C++: the Python checks cost a small frame tens of
// microseconds a call (doc/performance.md). Never accepts what they refuse (tests/test_inputs.py
// asks it of every refused input), nor makes anything else than they do
// (tests/test_common_check.py, every API variant through both).
py::object check_common(py::handle means3D_in, py::handle means2D, py::handle opacities,
                        py::handle shs, py::handle colors, py::handle scales,
                        py::handle rotations, py::handle cov3D, py::handle dc,
                        py::handle features, py::handle settings, py::handle median_depth,
                        py::handle inverse_depth) {
  const py::object none = py::none();
  RasterConfig c;
  // Gaussians: means3D sets P, the device and the dtype.
  const at::Tensor* means3D = tensor(means3D_in.ptr());
  if (means3D == nullptr || means3D->dim() != 2 || means3D->size(1) != 3) return none;
  const at::Tensor& like = *means3D;
  const int64_t P = like.size(0);
  const bool cuda = like.is_cuda();
  if (!(like.device().is_cpu() || (cuda && dgrd::has_cuda()))) return none;
  if (!(like.scalar_type() == at::kFloat ||
        (!cuda && like.scalar_type() == at::kDouble)))
    return none;
  const auto present = [](py::handle v) { return !v.is_none(); };
  const auto is = [&](py::handle v, std::initializer_list<int64_t> sizes) {
    return shaped_like(v.ptr(), like, sizes) != nullptr;
  };
  if (present(means2D) && !(is(means2D, {P, 3}) || is(means2D, {P, 2}) || is(means2D, {P, 4})))
    return none;
  const at::Tensor* opacity = shaped_like(opacities.ptr(), like, {P, 1});
  const at::Tensor* opacity_flat = shaped_like(opacities.ptr(), like, {P});
  if (opacity == nullptr && opacity_flat == nullptr) return none;
  if (present(dc) && (!is(dc, {P, 1, 3}) || present(colors))) return none;
  if (present(shs) == present(colors) && !present(dc)) return none;  // neither or both
  if (present(colors) && !is(colors, {P, 3})) return none;
  const at::Tensor* sh = shaped_like(shs.ptr(), like, {P, -1, 3});
  if (present(shs) && sh == nullptr) return none;
  if (present(scales) || present(rotations)) {
    if (present(cov3D) || !is(scales, {P, 3}) || !is(rotations, {P, 4})) return none;
  } else if (!is(cov3D, {P, 6})) {
    return none;
  }
  const at::Tensor* feature = shaped_like(features.ptr(), like, {P, -1});
  if (present(features) && (feature == nullptr || feature->size(1) < 1)) return none;
  if (!flag(median_depth.ptr(), c.median_depth) || !flag(inverse_depth.ptr(), c.inverse_depth))
    return none;

  // Settings (a missing field reads as null, which no helper accepts).
  const auto get = [&](const char* name) { return field(settings, name); };
  const auto ptr = [](const py::object& v) { return v ? v.ptr() : Py_None; };
  if (!int_in(ptr(get("image_height")), 1, 1 << 15, c.image_height) ||
      !int_in(ptr(get("image_width")), 1, 1 << 15, c.image_width) ||
      !real(ptr(get("tanfovx")), true, c.tanfovx) ||
      !real(ptr(get("tanfovy")), true, c.tanfovy) ||
      !real(ptr(get("scale_modifier")), false, c.scale_modifier) ||
      !int_in(ptr(get("sh_degree")), 0, 3, c.sh_degree) ||
      !flag(ptr(get("prefiltered")), c.prefiltered) || !flag(ptr(get("debug")), c.debug) ||
      c.debug || !flag(ptr(get("antialiasing")), c.antialiasing))
    return none;
  // kernel_size: absent from settings made for the original (its default then), else >= 0.
  if (const py::object kernel = get("kernel_size"))
    if (!real(kernel.ptr(), false, c.kernel_size) || c.kernel_size < 0) return none;
  // Sample offsets (Mip-Splatting's subpixel_offset): the Python checks read them.
  if (const py::object offset = get("subpixel_offset"))
    if (!offset.is_none()) return none;
  // The projection: absent from other settings classes (perspective then).
  if (const py::object ortho = get("orthographic"))
    if (!flag(ortho.ptr(), c.orthographic)) return none;
  if (const py::object fisheye = get("fisheye"))
    if (!flag(fisheye.ptr(), c.fisheye) || (c.fisheye && c.orthographic)) return none;
  // Lens distortion coefficients as plain numbers (a tensor: the Python checks).
  if (!lens_coefficients(settings, c)) return none;
  if (!present(colors)) {  // enough SH coefficients for the degree
    const int64_t given = (present(dc) ? 1 : 0) + (sh != nullptr ? sh->size(1) : 0);
    if (given < (c.sh_degree + 1) * (c.sh_degree + 1)) return none;
  }
  struct Part {
    const char* name;
    int64_t numel;
  };
  std::vector<at::Tensor> camera;
  for (const Part& part : {Part{"bg", 3}, Part{"viewmatrix", 16}, Part{"projmatrix", 16},
                           Part{"campos", 3}}) {
    const py::object v = field(settings, part.name);
    const at::Tensor* t = v ? tensor(v.ptr()) : nullptr;
    if (t == nullptr || !(t->device().is_cpu() || t->device().is_cuda()) ||
        !t->is_floating_point() || t->numel() != part.numel)
      return none;
    // A gradient of the camera or the background (a tensor that requires grad, grad mode
    // on): the Python path.
    if (t->requires_grad() && at::GradMode::is_enabled()) return none;
    camera.push_back(*t);
  }
  const std::vector<at::Tensor> packed = dgrd::pack_camera(camera, like, false);
  c.bg = packed[0];
  c.viewmatrix = packed[1];
  c.projmatrix = packed[2];
  c.campos = packed[3];
  const at::Tensor opacities_out =
      opacity != nullptr ? *opacity : opacity_flat->reshape({P, 1});
  return py::make_tuple(opacities_out, c);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace dgrd;
  py::class_<RasterConfig>(m, "RasterConfig")
      .def(py::init<>())
      // From checked settings (any object with the fields below) in one call: the per-call
      // Python of sixteen attribute stores was a measurable part of a small frame's overhead.
      .def(py::init([](py::handle settings, bool median_depth, bool inverse_depth) {
             RasterConfig c;
             c.image_height = settings.attr("image_height").cast<int64_t>();
             c.image_width = settings.attr("image_width").cast<int64_t>();
             c.tanfovx = settings.attr("tanfovx").cast<double>();
             c.tanfovy = settings.attr("tanfovy").cast<double>();
             c.scale_modifier = settings.attr("scale_modifier").cast<double>();
             c.sh_degree = settings.attr("sh_degree").cast<int64_t>();
             c.prefiltered = settings.attr("prefiltered").cast<bool>();
             c.kernel_size = settings.attr("kernel_size").cast<double>();
             c.antialiasing = settings.attr("antialiasing").cast<bool>();
             c.debug = settings.attr("debug").cast<bool>();
             c.camera_grad = settings.attr("camera_grad").cast<bool>();
             c.bg = settings.attr("bg").cast<at::Tensor>();
             c.viewmatrix = settings.attr("viewmatrix").cast<at::Tensor>();
             c.projmatrix = settings.attr("projmatrix").cast<at::Tensor>();
             c.campos = settings.attr("campos").cast<at::Tensor>();
             if (py::hasattr(settings, "orthographic"))
               c.orthographic = settings.attr("orthographic").cast<bool>();
             if (py::hasattr(settings, "fisheye"))
               c.fisheye = settings.attr("fisheye").cast<bool>();
             // checked settings: None, or the four coefficients and their fold angle
             if (py::hasattr(settings, "fisheye_distortion")) {
               const py::object k = settings.attr("fisheye_distortion");
               if (!k.is_none()) {
                 c.fisheye_distorted = true;
                 for (int i = 0; i < 4; ++i) c.fisheye_k[i] = py::cast<double>(k[py::int_(i)]);
                 c.fisheye_max_angle = settings.attr("fisheye_max_angle").cast<double>();
               }
             }
             // likewise: None, or (k1, k2, p1, p2, k3, k4, k5, k6) and the fold's u
             if (py::hasattr(settings, "pinhole_distortion")) {
               const py::object k = settings.attr("pinhole_distortion");
               if (!k.is_none()) {
                 c.pinhole_distorted = true;
                 for (int i = 0; i < kLensCoefficients; ++i)
                   c.pinhole_k[i] = py::cast<double>(k[py::int_(i)]);
                 c.pinhole_max_u = settings.attr("pinhole_max_u").cast<double>();
               }
             }
             if (py::hasattr(settings, "subpixel_offset")) {
               const py::object offset = settings.attr("subpixel_offset");
               if (!offset.is_none()) {
                 c.subpixel_offset = offset.cast<at::Tensor>();
                 c.sample_margin = settings.attr("sample_margin").cast<double>();
               }
             }
             c.median_depth = median_depth;
             c.inverse_depth = inverse_depth;
             return c;
           }),
           py::arg("settings"), py::arg("median_depth") = false, py::arg("inverse_depth") = false)
      .def_readwrite("image_height", &RasterConfig::image_height)
      .def_readwrite("image_width", &RasterConfig::image_width)
      .def_readwrite("tanfovx", &RasterConfig::tanfovx)
      .def_readwrite("tanfovy", &RasterConfig::tanfovy)
      .def_readwrite("scale_modifier", &RasterConfig::scale_modifier)
      .def_readwrite("sh_degree", &RasterConfig::sh_degree)
      .def_readwrite("prefiltered", &RasterConfig::prefiltered)
      .def_readwrite("kernel_size", &RasterConfig::kernel_size)
      .def_readwrite("antialiasing", &RasterConfig::antialiasing)
      .def_readwrite("debug", &RasterConfig::debug)
      .def_readwrite("median_depth", &RasterConfig::median_depth)
      .def_readwrite("inverse_depth", &RasterConfig::inverse_depth)
      .def_readwrite("orthographic", &RasterConfig::orthographic)
      .def_readwrite("fisheye", &RasterConfig::fisheye)
      // The lens coefficients as the kernels take them (tests compare the two checks' configs).
      .def_property_readonly("lens", [](const RasterConfig& c) {
        py::tuple fisheye_k(4), pinhole_k(dgrd::kLensCoefficients);
        for (int i = 0; i < 4; ++i) fisheye_k[i] = c.fisheye_k[i];
        for (int i = 0; i < dgrd::kLensCoefficients; ++i) pinhole_k[i] = c.pinhole_k[i];
        return py::make_tuple(c.fisheye_distorted, fisheye_k, c.fisheye_max_angle,
                              c.pinhole_distorted, pinhole_k, c.pinhole_max_u);
      })
      .def_readwrite("camera_grad", &RasterConfig::camera_grad)
      .def_readwrite("absolute_grad", &RasterConfig::absolute_grad)
      .def_readwrite("bg", &RasterConfig::bg)
      .def_readwrite("viewmatrix", &RasterConfig::viewmatrix)
      .def_readwrite("projmatrix", &RasterConfig::projmatrix)
      .def_readwrite("campos", &RasterConfig::campos)
      .def_readwrite("subpixel_offset", &RasterConfig::subpixel_offset)
      .def_readwrite("sample_margin", &RasterConfig::sample_margin);
  py::class_<GaussianTensors>(m, "GaussianInputs")
      .def(py::init<>())
      // All inputs in one call, None for an absent one: contiguity and the empty stand-ins are
      // settled here, without a Python call per tensor.
      .def(py::init([](const at::Tensor& means3D, std::optional<at::Tensor> opacities,
                       std::optional<at::Tensor> shs, std::optional<at::Tensor> colors,
                       std::optional<at::Tensor> scales, std::optional<at::Tensor> rotations,
                       std::optional<at::Tensor> cov3D, std::optional<at::Tensor> dc,
                       std::optional<at::Tensor> features) {
             const at::Tensor absent = at::empty({0}, means3D.options());
             const auto put = [&](const std::optional<at::Tensor>& t) {
               return contiguous_or(t, absent);
             };
             GaussianTensors g;
             g.means3D = means3D.contiguous();
             g.opacities = put(opacities);
             g.shs = put(shs);
             g.colors_precomp = put(colors);
             g.scales = put(scales);
             g.rotations = put(rotations);
             g.cov3D_precomp = put(cov3D);
             g.dc = put(dc);
             g.features = put(features);
             return g;
           }),
           py::arg("means3D"), py::arg("opacities"), py::arg("shs"), py::arg("colors_precomp"),
           py::arg("scales"), py::arg("rotations"), py::arg("cov3D_precomp"),
           py::arg("dc") = py::none(), py::arg("features") = py::none())
      .def_readwrite("means3D", &GaussianTensors::means3D)
      .def_readwrite("opacities", &GaussianTensors::opacities)
      .def_readwrite("dc", &GaussianTensors::dc)
      .def_readwrite("shs", &GaussianTensors::shs)
      .def_readwrite("colors_precomp", &GaussianTensors::colors_precomp)
      .def_readwrite("scales", &GaussianTensors::scales)
      .def_readwrite("rotations", &GaussianTensors::rotations)
      .def_readwrite("cov3D_precomp", &GaussianTensors::cov3D_precomp)
      .def_readwrite("features", &GaussianTensors::features);
  m.def("forward", &dgrd::forward,
        "Render colour, depth, weight and the optional maps; returns the backward state");
  m.def(
      "backward",
      [](const RasterConfig& c, const GaussianTensors& g, py::list state,
         const dgrd::UpstreamGrad& dcolor, const dgrd::UpstreamGrad& ddepth,
         const dgrd::UpstreamGrad& dweight, const dgrd::UpstreamGrad& dfeature_map,
         const dgrd::UpstreamGrad& dmedian, bool release_state) {
        return dgrd::backward(c, g, dgrd::take_state(state, release_state), release_state,
                              dcolor, ddepth, dweight, dfeature_map, dmedian);
      },
      "Gradients of every input from those of the rendered maps; release_state: the state's "
      "list is emptied and its buffers freed as the backward is done with them");
  m.def(
      "count_touches",
      [](const RasterConfig& c, py::list state) {
        return dgrd::count_touches(c, dgrd::take_state(state, /*release=*/false));
      },
      "The touch count of every Gaussian (MonoGS's n_touched) from a forward's state");
  m.def(
      "point_opacity",
      [](const RasterConfig& c, const GaussianTensors& g, py::list state, const at::Tensor& points) {
        return dgrd::point_opacity(c, g, dgrd::take_state(state, /*release=*/false), points);
      },
      "The opacity field at points (N, 3) from a forward's state and its Gaussians (GOF's integrate)");
  m.def(
      "gaussian_contributions",
      [](const RasterConfig& c, py::list state, bool statistics) {
        return dgrd::gaussian_contributions(c, dgrd::take_state(state, /*release=*/false),
                                            statistics);
      },
      py::arg("config"), py::arg("state"), py::arg("statistics") = true,
      "Each Gaussian's contribution statistics (weight sum, weight max, pixels, dominated "
      "pixels, opacity-transmittance sum) and each pixel's dominant Gaussian from a forward's "
      "state");
  m.def("check_common", &check_common, py::arg("means3D"), py::arg("means2D"),
        py::arg("opacities"), py::arg("shs"), py::arg("colors_precomp"), py::arg("scales"),
        py::arg("rotations"), py::arg("cov3D_precomp"), py::arg("dc"), py::arg("features"),
        py::arg("settings"), py::arg("median_depth"), py::arg("inverse_depth"),
        "The common call's checks: (opacities (P, 1), RasterConfig), or None for the Python "
        "checks to take the call");
  m.def("pack_camera", &dgrd::pack_camera, py::arg("parts"), py::arg("like"),
        py::arg("keep_grad"),
        "The settings' camera tensors as flat views of one private copy on like's device");
  m.def("mark_visible", &dgrd::mark_visible, "Points in front of the near plane");
  m.def("sparse_adam_step", &dgrd::sparse_adam_step,
        "One Adam step, in place, on the visible rows of a parameter and its moments");
  m.def("compute_relocation", &dgrd::compute_relocation, py::arg("opacity"), py::arg("scale"),
        py::arg("copies"),
        "3DGS-MCMC's relocation: each of N copies' opacity and scales (eq. 9)");
  m.def("ssim_forward", &dgrd::ssim_forward, py::arg("a"), py::arg("b"), py::arg("c1"),
        py::arg("c2"), py::arg("partials"),
        "The fused SSIM's map of images (N, H, W), and the 0, 3 or 4 partials its backward "
        "takes");
  m.def("ssim_backward", &dgrd::ssim_backward, py::arg("a"), py::arg("b"), py::arg("grad_map"),
        py::arg("partials"), py::arg("need_a"), py::arg("need_b"),
        "The fused SSIM's gradients of both images from the map's gradient");
  m.def("cpu_render_work", &dgrd::cpu_render_work,
        "Work counts of a float32 CPU forward (benchmarks): pairs, evaluations, exps, blends, "
        "lane evaluations");
  m.def("cpu_stage_seconds", &dgrd::cpu_stage_seconds,
        "Seconds each CPU stage took in this thread's last forward and backward (benchmarks)");
  m.def("set_cpu_tuning", &dgrd::set_cpu_tuning, py::arg("lanes"), py::arg("power_bound"),
        "Switch the float CPU path's techniques on or off (benchmarks; all on by default)");
  m.def("set_cuda_tuning", &dgrd::set_cuda_tuning, py::arg("switches"),
        "Switch the CUDA backend's techniques on or off (benchmarks; all on by default)");
  m.def("set_cuda_stage_timing", &dgrd::set_cuda_stage_timing, py::arg("on"),
        "Time each CUDA stage of the following calls (benchmarks; off by default)");
  m.def("cuda_stage_ms", &dgrd::cuda_stage_ms,
        "Device milliseconds of each CUDA stage of the last timed forward and backward");
  m.def("has_cuda", &dgrd::has_cuda, "Whether the CUDA kernels were compiled in");
}
