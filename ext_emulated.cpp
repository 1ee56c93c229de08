// Python bindings of the test-only _emulated_cuda module: the CUDA backend's glue and kernels, run on CPU tensors by the CUDA emulation.
#include <torch/extension.h>

#include "cuda_rasterizer/cuda_emulation.h"
#include "rasterize_points.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace dgrd;
  // RasterConfig and GaussianInputs are the classes that _C registers (pybind11 shares them).
  m.def("forward", &forward_cuda, "The CUDA forward, emulated");
  m.def(
      "backward",
      [](const RasterConfig& c, const GaussianTensors& g, const std::vector<torch::Tensor>& state,
         const torch::Tensor& dcolor, const torch::Tensor& ddepth, const torch::Tensor& dweight) {
        return backward_cuda(c, g, ForwardState::from_list(state), dcolor, ddepth, dweight);
      },
      "The CUDA backward, emulated");
  m.def("mark_visible", &mark_visible_cuda, "The CUDA mark_visible, emulated");
  m.def("set_thread_order", &emu::set_thread_order,
        "Order of a block's threads between sync points: 'asc', 'desc' or 'random:SEED'");
  m.def("thread_order", &emu::thread_order, "The current thread order");
}
