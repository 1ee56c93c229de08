// Sparse Adam on the CPU (an OpenMP loop over the visible rows) and the dispatch by device.
#include "sparse_adam.h"

namespace dgrd {

namespace {

void check_same_layout(const char* name, const torch::Tensor& t, const torch::Tensor& param) {
  TORCH_CHECK(t.sizes() == param.sizes() && t.scalar_type() == param.scalar_type() &&
                  t.device() == param.device() && t.is_contiguous(),
              "sparse_adam_step: ", name, " must be contiguous and match param in shape, dtype "
              "and device");
}

template <typename T>
void sparse_adam_cpu(const SparseAdamRows<T>& t, const AdamCoefficients<T>& k) {
  // Rows are independent: static chunks of whole rows keep each thread on contiguous memory.
#pragma omp parallel for schedule(static) if (t.rows * t.row_size > 32768)
  for (int64_t row = 0; row < t.rows; ++row) {
    if (!t.visible[row]) continue;
    const int64_t end = (row + 1) * t.row_size;
    for (int64_t index = row * t.row_size; index < end; ++index) adam_update_entry(k, t, index);
  }
}

}  // namespace

void sparse_adam_step(torch::Tensor param, const torch::Tensor& grad, torch::Tensor exp_avg,
                      torch::Tensor exp_avg_sq, const torch::Tensor& visible, double lr,
                      double beta1, double beta2, double eps) {
  check_same_layout("param", param, grad);
  check_same_layout("grad", grad, param);
  check_same_layout("exp_avg", exp_avg, param);
  check_same_layout("exp_avg_sq", exp_avg_sq, param);
  TORCH_CHECK(visible.scalar_type() == torch::kBool && visible.dim() == 1 &&
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
