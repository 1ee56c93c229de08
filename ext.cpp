// Python bindings of the _C module.
#include <torch/extension.h>

#include <optional>

#include "rasterize_points.h"
#include "sparse_adam.h"

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
             c.antialiasing = settings.attr("antialiasing").cast<bool>();
             c.debug = settings.attr("debug").cast<bool>();
             c.camera_grad = settings.attr("camera_grad").cast<bool>();
             c.bg = settings.attr("bg").cast<torch::Tensor>();
             c.viewmatrix = settings.attr("viewmatrix").cast<torch::Tensor>();
             c.projmatrix = settings.attr("projmatrix").cast<torch::Tensor>();
             c.campos = settings.attr("campos").cast<torch::Tensor>();
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
      .def_readwrite("antialiasing", &RasterConfig::antialiasing)
      .def_readwrite("debug", &RasterConfig::debug)
      .def_readwrite("median_depth", &RasterConfig::median_depth)
      .def_readwrite("inverse_depth", &RasterConfig::inverse_depth)
      .def_readwrite("camera_grad", &RasterConfig::camera_grad)
      .def_readwrite("absolute_grad", &RasterConfig::absolute_grad)
      .def_readwrite("bg", &RasterConfig::bg)
      .def_readwrite("viewmatrix", &RasterConfig::viewmatrix)
      .def_readwrite("projmatrix", &RasterConfig::projmatrix)
      .def_readwrite("campos", &RasterConfig::campos);
  py::class_<GaussianTensors>(m, "GaussianInputs")
      .def(py::init<>())
      // All inputs in one call, None for an absent one: contiguity and the empty stand-ins are
      // settled here, without a Python call per tensor.
      .def(py::init([](const torch::Tensor& means3D, std::optional<torch::Tensor> opacities,
                       std::optional<torch::Tensor> shs, std::optional<torch::Tensor> colors,
                       std::optional<torch::Tensor> scales, std::optional<torch::Tensor> rotations,
                       std::optional<torch::Tensor> cov3D, std::optional<torch::Tensor> dc,
                       std::optional<torch::Tensor> features) {
             const torch::Tensor absent = torch::empty({0}, means3D.options());
             const auto put = [&](const std::optional<torch::Tensor>& t) {
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
  m.def("backward", &dgrd::backward, "Gradients of every input from those of the rendered maps");
  m.def("pack_camera", &dgrd::pack_camera, py::arg("parts"), py::arg("like"),
        py::arg("keep_grad"),
        "The settings' camera tensors as flat views of one private copy on like's device");
  m.def("mark_visible", &dgrd::mark_visible, "Points in front of the near plane");
  m.def("sparse_adam_step", &dgrd::sparse_adam_step,
        "One Adam step, in place, on the visible rows of a parameter and its moments");
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
