// Sparse Adam on the CPU (an OpenMP loop over the visible rows) and the dispatch by device.
#include "sparse_adam.h"

#include <ATen/Dispatch.h>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace dgrd {

namespace {

void check_same_layout(const char* name, const at::Tensor& t, const at::Tensor& param) {
  TORCH_CHECK(t.sizes() == param.sizes() && t.scalar_type() == param.scalar_type() &&
                  t.device() == param.device() && t.is_contiguous(),
              "sparse_adam_step: ", name, " must be contiguous and match param in shape, dtype "
              "and device");
}

// One contiguous run of visible entries. The four arrays are separate tensors (checked below),
// so the pointers do not alias and the update vectorizes.
template <typename T>
void adam_update_run(const AdamCoefficients<T>& k, T* __restrict param,
                     const T* __restrict grad, T* __restrict exp_avg,
                     T* __restrict exp_avg_sq, int64_t count) {
#if defined(_OPENMP) && _OPENMP >= 201307  // OpenMP 4.0; MSVC's /openmp is 2.0 and refuses it
#pragma omp simd
#endif
  for (int64_t i = 0; i < count; ++i)
    adam_update_entry(k, param[i], grad[i], exp_avg[i], exp_avg_sq[i]);
}

template <typename T>
void sparse_adam_cpu(const SparseAdamRows<T>& t, const AdamCoefficients<T>& k) {
  // Each thread takes a block of whole rows and steps its runs of consecutive visible rows,
  // which are contiguous memory.
  const int64_t entries = t.rows * t.row_size;
#pragma omp parallel if (entries > 32768)
  {
    int64_t first = 0, last = t.rows;
#ifdef _OPENMP
    const int64_t threads = omp_get_num_threads(), id = omp_get_thread_num();
    first = t.rows * id / threads;
    last = t.rows * (id + 1) / threads;
#endif
    for (int64_t row = first; row < last;) {
      if (!t.visible[row]) {
        ++row;
        continue;
      }
      const int64_t start = row;
      while (row < last && t.visible[row]) ++row;
      const int64_t begin = start * t.row_size, count = (row - start) * t.row_size;
      adam_update_run(k, t.param + begin, t.grad + begin, t.exp_avg + begin, t.exp_avg_sq + begin,
                      count);
    }
  }
}

}  // namespace

void sparse_adam_step(at::Tensor param, const at::Tensor& grad, at::Tensor exp_avg,
                      at::Tensor exp_avg_sq, const at::Tensor& visible, double lr,
                      double beta1, double beta2, double eps) {
  check_same_layout("param", param, grad);
  check_same_layout("grad", grad, param);
  check_same_layout("exp_avg", exp_avg, param);
  check_same_layout("exp_avg_sq", exp_avg_sq, param);
  TORCH_CHECK(!param.is_same(grad) && !param.is_same(exp_avg) && !param.is_same(exp_avg_sq) &&
                  !exp_avg.is_same(exp_avg_sq),
              "sparse_adam_step: param, grad, exp_avg and exp_avg_sq must be distinct tensors");
  TORCH_CHECK(visible.scalar_type() == at::kBool && visible.dim() == 1 &&
                  visible.is_contiguous() && visible.device() == param.device(),
              "sparse_adam_step: visible must be a contiguous 1-D bool tensor on param's device");
  TORCH_CHECK(visible.numel() > 0 ? param.numel() % visible.numel() == 0 : param.numel() == 0,
              "sparse_adam_step: param has ", param.numel(), " entries, not a multiple of the ",
              visible.numel(), " rows of visible");
  if (param.numel() == 0) return;
  if (param.is_cuda()) {
#ifdef DGRD_WITH_CUDA
    sparse_adam_step_cuda(param, grad, exp_avg, exp_avg_sq, visible, lr, beta1, beta2, eps);
    return;
#else
    TORCH_CHECK(false, "diff_gaussian_rasterization_depth was built without CUDA");
#endif
  }
  AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "sparse_adam_step", [&] {
    sparse_adam_cpu(rows_of<scalar_t>(param, grad, exp_avg, exp_avg_sq, visible),
                    AdamCoefficients<scalar_t>::make(lr, beta1, beta2, eps));
  });
}

}  // namespace dgrd
