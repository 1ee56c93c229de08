// Bindings of the test-only _emulated_cuda module: the emulated CUDA backend and self-checks.
#include <torch/csrc/utils/pybind.h>  // not all of torch/extension.h: see ext.cpp
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>

#include "cuda_rasterizer/blend.h"
#include "cuda_rasterizer/cuda_emulation.h"
#include "cuda_rasterizer/warp_sums.h"
#include "bindings.h"
#include "rasterize_points.h"
#include "fused_ssim.h"
#include "mcmc.h"
#include "sparse_adam.h"

namespace dgrd {
namespace emulation_checks {

// Each thread records when it ran (its turn) before and after a barrier.
__global__ void turns_kernel(int* counter, int* turns) {
  const int t = int(threadIdx.x);
  turns[t] = atomicAdd(counter, 1);
  __syncthreads();
  turns[blockDim.x + t] = atomicAdd(counter, 1);
}

// Each block of a 2D grid records when it ran (its turn), at its linear index.
__global__ void block_turns_kernel(int* counter, int* turns) {
  if (threadIdx.x == 0) turns[blockIdx.y * gridDim.x + blockIdx.x] = atomicAdd(counter, 1);
}

// Warp collectives of one block; out holds, per thread: shfl_down, shfl_xor, shfl_idx, shfl_up
// (of the value 100 * thread + 1), ballot, any, all (of `odd`), and the block count of `odd`.
__global__ void collectives_kernel(int width, float* out) {
  const int t = int(threadIdx.x), lane = t % 32;
  const float v = 100.0f * t + 1.0f;
  const int odd = t % 2;
  float* o = out + 8 * t;
  o[0] = __shfl_down_sync(0xffffffffu, v, 3, width);
  o[1] = __shfl_xor_sync(0xffffffffu, v, 5, width);
  o[2] = __shfl_sync(0xffffffffu, v, (lane + 7) % 32, width);
  o[3] = __shfl_up_sync(0xffffffffu, v, 2, width);
  o[4] = float(__ballot_sync(0xffffffffu, odd) & 0xffffu);  // exact in a float
  o[5] = float(__any_sync(0xffffffffu, lane == 31 && odd));
  o[6] = float(__all_sync(0xffffffffu, odd));
  o[7] = float(__syncthreads_count(odd));
}

// Reads a shared variable nobody wrote: the poison.
__global__ void unwritten_shared_kernel(float* out) {
  DGRD_SHARED(float, never_written);
  DGRD_SHARED_ARRAY(int, never_written_ints, 4);
  out[0] = never_written;
  out[1] = float(never_written_ints[3]);
}

// A branch on a shared variable nobody wrote: the NaN poison fails the test, so nothing shows
// but under valgrind (tools/sanitize_cuda.py --valgrind), which reports the branch.
__global__ void unwritten_branch_kernel(float* out) {
  DGRD_SHARED(float, never_written);
  if (never_written < 1.0f) out[threadIdx.x] = 1.0f;
}

// Planted bugs: the emulation must refuse each.
__global__ void mismatched_barrier_kernel() {
  if (threadIdx.x < 32)
    __syncthreads();
  else
    __syncthreads();
}
__global__ void barrier_after_exit_kernel(float* out) {
  if (threadIdx.x >= 32) return;  // an early return for some threads of the block
  __syncthreads();
  out[threadIdx.x] = 1.0f;
}
__global__ void divergent_shuffle_kernel(float* out) {
  float v = float(threadIdx.x);
  if (threadIdx.x % 2) v = __shfl_down_sync(0xffffffffu, v, 1);
  __syncthreads();
  out[threadIdx.x] = v;
}
__global__ void misaligned_load_kernel(const float* data, float* out) {
  // A Vec4 read 4 bytes past a 16-byte boundary: a GPU faults ("misaligned address").
  const Vec4<float>* quads = reinterpret_cast<const Vec4<float>*>(data + 1);
  out[threadIdx.x] = quads[threadIdx.x].x;
}
__global__ void null_read_kernel(const float* data, float* out) {
  out[threadIdx.x] = data[threadIdx.x];  // data is null
}
__global__ void out_of_bounds_kernel(float* data, int n) {
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (i <= n) data[i] = 1.0f;  // one past the end
}

at::Tensor turns(int threads) {
  at::Tensor counter = at::zeros({1}, at::kInt);
  at::Tensor out = at::full({2 * threads}, -1, at::kInt);
  DGRD_LAUNCH(turns_kernel, 1, threads, nullptr)(counter.data_ptr<int>(), out.data_ptr<int>());
  return out;
}

at::Tensor block_turns(int grid_x, int grid_y) {
  at::Tensor counter = at::zeros({1}, at::kInt);
  at::Tensor out = at::full({grid_x * grid_y}, -1, at::kInt);
  DGRD_LAUNCH(block_turns_kernel, dim3(grid_x, grid_y), 64, nullptr)(counter.data_ptr<int>(),
                                                                     out.data_ptr<int>());
  return out;
}

at::Tensor collectives(int threads, int width) {
  at::Tensor out = at::empty({threads, 8});
  DGRD_LAUNCH(collectives_kernel, 1, threads, nullptr)(width, out.data_ptr<float>());
  return out;
}

at::Tensor unwritten_shared() {
  at::Tensor out = at::zeros({2});
  DGRD_LAUNCH(unwritten_shared_kernel, 1, 32, nullptr)(out.data_ptr<float>());
  return out;
}

at::Tensor unwritten_branch() {
  at::Tensor out = at::zeros({32});
  DGRD_LAUNCH(unwritten_branch_kernel, 1, 32, nullptr)(out.data_ptr<float>());
  return out;
}

void mismatched_barrier() { DGRD_LAUNCH(mismatched_barrier_kernel, 1, 64, nullptr)(); }

void misaligned_load() {
  at::Tensor data = at::zeros({4 * 32 + 4}), out = at::zeros({32});
  DGRD_LAUNCH(misaligned_load_kernel, 1, 32, nullptr)(data.data_ptr<float>(),
                                                      out.data_ptr<float>());
}

void barrier_after_exit() {
  at::Tensor out = at::zeros({64});
  DGRD_LAUNCH(barrier_after_exit_kernel, 1, 64, nullptr)(out.data_ptr<float>());
}

void divergent_shuffle() {
  at::Tensor out = at::zeros({64});
  DGRD_LAUNCH(divergent_shuffle_kernel, 1, 64, nullptr)(out.data_ptr<float>());
}

void null_read() {
  at::Tensor out = at::zeros({32});
  DGRD_LAUNCH(null_read_kernel, 1, 32, nullptr)(nullptr, out.data_ptr<float>());
}

void out_of_bounds(int n) {
  at::Tensor data = at::zeros({n});
  DGRD_LAUNCH(out_of_bounds_kernel, (n + 64) / 64, 64, nullptr)(data.data_ptr<float>(), n);
}

// The render kernels' helpers, run alone.

// One warp: thread t holds values[t][0..N) and adds the warp's totals into out[0..size),
// counting in writes[k] the atomics aimed at out[k]. by_slot: as the render backward does it
// (each lane's scatter_slot taken first, then warp_scatter_total), else warp_scatter_add.
template <int N>
__global__ void warp_scatter_add_kernel(const float* values, int size, bool by_slot, float* out,
                                        int* writes) {
  float v[N];
  for (int k = 0; k < N; ++k) v[k] = values[threadIdx.x * N + k];
  if constexpr (gpu::scatter_held<N, 16>() == 1) {
    if (by_slot) {
      const int slot = gpu::scatter_slot<N>(size);
      const float total = gpu::warp_scatter_total(v);
      if (slot >= 0) {
        atomicAdd(writes + slot, 1);
        atomicAdd(out + slot, total);
      }
      return;
    }
  }
  gpu::warp_scatter_add(v, size, [out, writes](int k) {
    atomicAdd(writes + k, 1);
    return out + k;
  });
}

template <int N>
void launch_warp_scatter_add(const float* in, int size, bool by_slot, float* out, int* writes) {
  DGRD_LAUNCH(warp_scatter_add_kernel<N>, 1, 32, nullptr)(in, size, by_slot, out, writes);
}

// values: 32 x N, N one of the instantiated counts (by_slot: up to 32). Returns out (N entries:
// the sums, then zeros past `size`) and how many atomics each entry received.
std::vector<at::Tensor> warp_scatter_add(const at::Tensor& values, int size, bool by_slot) {
  TORCH_CHECK(values.dim() == 2 && values.size(0) == 32, "values: 32 x N");
  const at::Tensor v = values.to(at::kFloat).contiguous();
  const int n = int(v.size(1));
  TORCH_CHECK(0 <= size && size <= n, "size: 0 .. N");
  TORCH_CHECK(!by_slot || n <= 32, "by_slot: N up to 32");
  at::Tensor out = at::zeros({n}, at::kFloat);
  at::Tensor writes = at::zeros({n}, at::kInt);
  const float* in = v.data_ptr<float>();
  float* o = out.data_ptr<float>();
  int* w = writes.data_ptr<int>();
  switch (n) {
    case 1: launch_warp_scatter_add<1>(in, size, by_slot, o, w); break;
    case 2: launch_warp_scatter_add<2>(in, size, by_slot, o, w); break;
    case 6: launch_warp_scatter_add<6>(in, size, by_slot, o, w); break;
    case 10: launch_warp_scatter_add<10>(in, size, by_slot, o, w); break;
    case 14: launch_warp_scatter_add<14>(in, size, by_slot, o, w); break;
    case 22: launch_warp_scatter_add<22>(in, size, by_slot, o, w); break;
    case 40: launch_warp_scatter_add<40>(in, size, by_slot, o, w); break;
    default: TORCH_CHECK(false, "N must be 1, 2, 6, 10, 14, 22 or 40");
  }
  return {out, writes};
}

// band_reach_mask<2> (a warp's two rows) of each splat for the tile at (x0, y0).
at::Tensor band_reach_masks(const at::Tensor& means2d, const at::Tensor& conic_opacity,
                            int x0, int y0) {
  const at::Tensor m = means2d.to(at::kFloat).contiguous();
  const at::Tensor c = conic_opacity.to(at::kFloat).contiguous();
  TORCH_CHECK(m.dim() == 2 && m.size(1) == 2 && c.dim() == 2 && c.size(1) == 4 &&
                  c.size(0) == m.size(0), "means2d: N x 2, conic_opacity: N x 4");
  at::Tensor out = at::empty({m.size(0)}, at::kLong);
  const float* mp = m.data_ptr<float>();
  const float* cp = c.data_ptr<float>();
  for (int64_t i = 0; i < m.size(0); ++i)
    out[i] = int64_t(band_reach_mask<2>(x0, y0, Vec2<float>{mp[2 * i], mp[2 * i + 1]},
                                        Vec4<float>{cp[4 * i], cp[4 * i + 1], cp[4 * i + 2],
                                                    cp[4 * i + 3]}));
  return out;
}

// (slot, tile) of each block of a grid of `tiles` + `capacity` blocks in TileSplits' order
// (is_tile_block, block_tile, block_slot): slot -1 for a tile's block, tile -1 for a slot's (ListPart reads
// the slot's tile from the table).
at::Tensor block_order(int tiles, int capacity, bool parts_first) {
  TileSplits splits{};
  splits.capacity = capacity;
  splits.parts_first = parts_first;
  at::Tensor out = at::empty({tiles + capacity, 2}, at::kLong);
  for (int b = 0; b < tiles + capacity; ++b) {
    const bool tile_block = splits.is_tile_block(b, tiles);
    out[b][0] = tile_block ? -1 : splits.block_slot(b, tiles);
    out[b][1] = tile_block ? splits.block_tile(b) : -1;
  }
  return out;
}

}  // namespace emulation_checks
}  // namespace dgrd

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace dgrd;
  // RasterConfig and GaussianInputs are the classes that _C registers (pybind11 shares them).
  m.def("forward", &forward_cuda, "The CUDA forward, emulated");
  m.def(
      "backward",
      [](const RasterConfig& c, const GaussianTensors& g, py::list state,
         const UpstreamGrad& dcolor, const UpstreamGrad& ddepth, const UpstreamGrad& dweight,
         const UpstreamGrad& dfeature_map, const UpstreamGrad& dmedian, bool release_state) {
        const at::Tensor absent = at::empty({0}, g.means3D.options());
        return backward_cuda(c, g, take_state(state, release_state),
                             {contiguous_or(dcolor, absent), contiguous_or(ddepth, absent),
                              contiguous_or(dweight, absent), contiguous_or(dfeature_map, absent),
                              contiguous_or(dmedian, absent)},
                             release_state);
      },
      "The CUDA backward, emulated");
  m.def(
      "count_touches",
      [](const RasterConfig& c, py::list state) {
        return count_touches_cuda(c, take_state(state, /*release=*/false));
      },
      "The CUDA touch count, emulated");
  m.def(
      "point_opacity",
      [](const RasterConfig& c, const GaussianTensors& g, py::list state, const at::Tensor& points) {
        return point_opacity_cuda(c, g, take_state(state, /*release=*/false), points);
      },
      "The CUDA opacity field at points, emulated");
  m.def(
      "gaussian_contributions",
      [](const RasterConfig& c, py::list state, bool statistics) {
        return gaussian_contributions_cuda(c, take_state(state, /*release=*/false), statistics);
      },
      py::arg("config"), py::arg("state"), py::arg("statistics") = true,
      "The CUDA contribution statistics and dominant Gaussians, emulated");
  m.def("mark_visible", &mark_visible_cuda, "The CUDA mark_visible, emulated");
  m.def("set_cuda_tuning", &set_cuda_tuning_cuda, py::arg("switches"),
        "Switch the CUDA backend's techniques on or off, emulated");
  m.def("set_cuda_stage_timing", &set_cuda_stage_timing_cuda, py::arg("on"),
        "Time each CUDA stage of the following calls, emulated (host clock)");
  m.def("cuda_stage_ms", &cuda_stage_ms_cuda, "Milliseconds of each stage, emulated");
  m.def("sparse_adam_step", &sparse_adam_step_cuda, "The CUDA sparse Adam step, emulated");
  m.def("compute_relocation", &compute_relocation_cuda, py::arg("opacity"), py::arg("scale"),
        py::arg("copies"), "3DGS-MCMC's relocation kernel, emulated");
  m.def("ssim_forward", &ssim_forward_cuda, py::arg("a"), py::arg("b"), py::arg("c1"),
        py::arg("c2"), py::arg("partials"), "The fused SSIM's CUDA forward, emulated");
  m.def("ssim_backward", &ssim_backward_cuda, py::arg("a"), py::arg("b"), py::arg("grad_map"),
        py::arg("partials"), py::arg("need_a"), py::arg("need_b"),
        "The fused SSIM's CUDA backward, emulated");
  m.def("set_thread_order", &emu::set_thread_order,
        "Order of a block's threads between sync points, and of a grid's blocks: 'asc', 'desc' "
        "or 'random:SEED'");
  m.def("thread_order", &emu::thread_order, "The current thread order");
  m.def(
      "first_unwritten_byte",
      [](const at::Tensor& t) { return emu::first_unwritten_byte(t.data_ptr(), t.nbytes()); },
      py::arg("tensor"),
      "Under valgrind: the byte offset of the tensor's first byte that nothing wrote since the "
      "emulation poisoned it, else -1");
  m.def("tells_valgrind", &emu::tells_valgrind,
        "Whether the emulation was built with valgrind's headers, to tell it what is unwritten");
  m.def("under_valgrind", &emu::under_valgrind,
        "Whether valgrind runs this process (and the emulation tells it what is unwritten)");
  m.def("record_launches", &emu::record_launches, py::arg("on"),
        "Tests: record every kernel launch from now on (or stop), the record emptied");
  m.def(
      "take_launches",
      [] {
        std::vector<std::tuple<std::string, unsigned, unsigned>> out;
        for (const emu::LaunchRecord& r : emu::take_launches())
          out.emplace_back(r.kernel, r.grid_x, r.grid_y);
        return out;
      },
      "Tests: the launches recorded since the last call, as (kernel, grid x, grid y)");

  m.def(
      "fused_multiply_add",
      [] {
#ifdef DGRD_EMULATE_FMA
        return true;
#else
        return false;
#endif
      },
      "Whether the kernels were built with fused multiply-adds (tools/emulated_build.py), so "
      "that they round as a GPU's may rather than as the CPU backend does");

  auto checks = m.def_submodule(
      "checks", "Kernels that check the emulation itself, and the render kernels' helpers alone");
  checks.def("turns", &emulation_checks::turns);
  checks.def("block_turns", &emulation_checks::block_turns);
  checks.def("collectives", &emulation_checks::collectives);
  checks.def("unwritten_shared", &emulation_checks::unwritten_shared);
  checks.def("unwritten_branch", &emulation_checks::unwritten_branch);
  checks.def("mismatched_barrier", &emulation_checks::mismatched_barrier);
  checks.def("barrier_after_exit", &emulation_checks::barrier_after_exit);
  checks.def("misaligned_load", &emulation_checks::misaligned_load);
  checks.def("divergent_shuffle", &emulation_checks::divergent_shuffle);
  checks.def("null_read", &emulation_checks::null_read);
  checks.def("out_of_bounds", &emulation_checks::out_of_bounds);
  checks.def("warp_scatter_add", &emulation_checks::warp_scatter_add, py::arg("values"),
             py::arg("size"), py::arg("by_slot") = false);
  checks.def("band_reach_masks", &emulation_checks::band_reach_masks);
  checks.def("block_order", &emulation_checks::block_order, py::arg("tiles"),
             py::arg("capacity"), py::arg("parts_first"));
}
