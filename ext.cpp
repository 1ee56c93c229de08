// Python bindings of the _C module.
#include <torch/extension.h>

#include "rasterize_points.h"
#include "sparse_adam.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace dgrd;
  py::class_<RasterConfig>(m, "RasterConfig")
      .def(py::init<>())
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
      .def_readwrite("bg", &RasterConfig::bg)
      .def_readwrite("viewmatrix", &RasterConfig::viewmatrix)
      .def_readwrite("projmatrix", &RasterConfig::projmatrix)
      .def_readwrite("campos", &RasterConfig::campos);
  py::class_<GaussianTensors>(m, "GaussianInputs")
      .def(py::init<>())
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
