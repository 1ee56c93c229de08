// The sparse Adam update of one parameter entry (the 2024 upstream's optimizer), shared by the
// CPU loop and the CUDA kernel.
#pragma once

#include <cstdint>

#include "vector_math.h"

namespace dgrd {

// One parameter tensor seen as `rows` Gaussians of `row_size` contiguous entries each, with its
// gradient and Adam moments laid out the same way. Only rows whose `visible` flag is set change.
template <typename T>
struct SparseAdamRows {
  T* param;
  const T* grad;
  T* exp_avg;
  T* exp_avg_sq;
  const bool* visible;  // rows
  int64_t rows;
  int64_t row_size;
};

// The coefficients are rounded from double once, so that 1 - beta is the nearest T to 0.1
// rather than the rounding error of 1 - T(0.9).
template <typename T>
struct AdamCoefficients {
  T lr, eps;
  T beta1, one_minus_beta1;
  T beta2, one_minus_beta2;

  static AdamCoefficients make(double lr, double beta1, double beta2, double eps) {
    return {T(lr), T(eps), T(beta1), T(1.0 - beta1), T(beta2), T(1.0 - beta2)};
  }
};

// No bias correction, as in the 2024 upstream, whose learning rates were tuned without it.
template <typename T>
DGRD_HD void adam_update_entry(const AdamCoefficients<T>& k, T& param, T grad, T& exp_avg,
                               T& exp_avg_sq) {
  exp_avg = k.beta1 * exp_avg + k.one_minus_beta1 * grad;
  exp_avg_sq = k.beta2 * exp_avg_sq + k.one_minus_beta2 * grad * grad;
  param = param - k.lr * exp_avg / (sqrt_(exp_avg_sq) + k.eps);
}

template <typename T>
DGRD_HD void adam_update_entry(const AdamCoefficients<T>& k, const SparseAdamRows<T>& t,
                               int64_t index) {
  adam_update_entry(k, t.param[index], t.grad[index], t.exp_avg[index], t.exp_avg_sq[index]);
}

}  // namespace dgrd
