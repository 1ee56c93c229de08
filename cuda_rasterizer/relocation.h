// 3DGS-MCMC's relocation (Kheradmand et al. 2024, eq. 9): the opacity and scale of each of N
// copies of a Gaussian, so that the N stacked render about as the one did. Shared by the CPU
// loop (mcmc.cpp) and the CUDA kernel (mcmc_cuda.cu); its PyTorch twin is
// reference.compute_relocation_reference.
#pragma once

#include <cstdint>

#include "vector_math.h"

namespace dgrd {

// The opacity of each copy and the factor on each scale axis, in double whatever the tensors'
// type: the sums below cancel.
struct Relocation {
  double opacity;
  double scale_factor;
};

// The eq. 9 denominator, D = sum_{j=1..N} (-1)^(j+1) C(N, j) a^j / sqrt(j), for the copies'
// opacity a: the integral of the N copies' stacked profile 1 - (1 - a g)^N along one axis, in
// units of the integral of g (g a unit Gaussian; g^j integrates to 1/sqrt(j) of g). The paper
// writes it as a double sum over i <= N, k < i of C(i-1, k) (-1)^k a^(k+1) / sqrt(k+1); the
// sum over i of C(i-1, k) is C(N, k+1), which leaves these N terms.
//
// The terms alternate and reach about (1 + a)^N, which is at most 1 / (1 - o) (a N <=
// -log(1 - o)): summed in double they lose nothing that matters while (1 + a)^N <= 2^20 (every
// o below 1 - 1e-6, and any o for N <= 20). Past that (an opacity at 1 - 1e-6 or closer,
// float32's sigmoid gives exactly 1 from a logit of 17 on, shared among many copies) the sum
// would cancel to noise (N = 50, o = 1: terms of 1e14), so D is taken from its integral
// instead,
//   D = 2 / sqrt(pi) * integral_0^inf (1 - (1 - a exp(-u^2))^N) du,
// (1 / sqrt(j) = integral of 2 exp(-j u^2) / sqrt(pi) over u >= 0), whose integrand lies in
// [0, 1]: the trapezoidal rule on an even, entire integrand converges faster than any power of
// the step, and a step of 1/32 gives D to a few units of double's rounding (tests against 80
// digits).
DGRD_HD double relocation_denominator(double a, int64_t copies) {
  const double n = double(copies);
  constexpr double kLargestSummedTerm = 1048576.0;  // 2^20
  if (n * log1p_(a) <= log_(kLargestSummedTerm)) {
    // C(N, j) a^j as a running product, which stays below (1 + a)^N (C(N, j) alone overflows
    // for large N). Past their peak (j > a N) the terms only shrink; once one is below 2^-60 of
    // the sum the rest cannot reach its last bit, so large N with a faint o stops early.
    double sum = 0.0, term = 1.0;
    for (int64_t j = 1; j <= copies; ++j) {
      term *= a * double(copies - j + 1) / double(j);
      const double signed_term = term / sqrt_(double(j));
      sum += (j & 1) ? signed_term : -signed_term;
      if (double(j) > a * n && term < sum * 8.673617379884035e-19) break;  // 2^-60
    }
    return sum;
  }
  // Here a N > 13 (a <= 1): the plateau ends near u = sqrt(log(a N)); 40 more units of u^2 put
  // the tail, about a N exp(-u^2), below 1e-17 of D (which is >= 1 here). The node u = 0 has
  // half weight; x = 1 (o = 1) gives 1 there through log1p(-1) = -inf.
  constexpr double kStep = 1.0 / 32.0;
  const int64_t steps = int64_t(sqrt_(log_(a * n) + 40.0) / kStep) + 1;
  double sum = 0.5 * -expm1_(n * log1p_(-a));
  for (int64_t i = 1; i <= steps; ++i) {
    const double u = double(i) * kStep;
    sum += -expm1_(n * log1p_(-a * exp_(-u * u)));
  }
  return sum * kStep * 1.1283791670955126;  // 2 / sqrt(pi)
}

// One Gaussian of opacity o in [0, 1] shared by copies = N >= 1 Gaussians. The copies' opacity
// makes the stack's peak o again: 1 - (1 - o_N)^N = o, o_N = 1 - (1 - o)^(1/N), written with
// expm1 and log1p to keep its relative precision for faint Gaussians (o = 1 gives 1). Their
// scale makes the stack's integral along each axis o's again: s_N = s o / D(o_N, N). As o goes
// to 0, D goes to o (the copies do not overlap in alpha) and the factor to 1, which o = 0 takes.
// One copy is the Gaussian itself, bit for bit.
DGRD_HD Relocation relocate(double opacity, int64_t copies) {
  if (copies == 1 || opacity <= 0.0) return {opacity, 1.0};
  const double a = -expm1_(log1p_(-opacity) / double(copies));
  return {a, opacity / relocation_denominator(a, copies)};
}

}  // namespace dgrd
