// Checks fast_exp.h: accuracy of exp_poly against double exp, and lanes against the scalar.
#include <cmath>
#include <cstdio>

#include "cuda_rasterizer/cpu_lanes.h"

int main() {
  using namespace dgrd;
  double max_ulp = 0;
  long samples = 0, lane_mismatches = 0, nonzero_below = 0;
  float block[kLanes];
  int filled = 0;
  for (float x = -90.0f; x <= 0.0f; x += 3e-5f) {
    const float got = exp_poly(x);
    ++samples;
    if (x < -87.0f) {
      nonzero_below += got != 0.0f;
    } else {
      const double want = std::exp(double(x));
      const double ulp = double(std::nextafter(float(want), 1.0f) - float(want));
      max_ulp = std::fmax(max_ulp, std::fabs(double(got) - want) / ulp);
    }
    block[filled++] = x;
    if (filled == kLanes) {
      const Lanes lanes = exp_poly(Lanes::load(block));
      for (int k = 0; k < kLanes; ++k) lane_mismatches += lanes[k] != exp_poly(block[k]);
      filled = 0;
    }
  }
  // Above 0 (splat_alpha takes the exponential before it tests the power's sign) the power is
  // taken as 0: exactly 1, in the scalar and in every lane, however large.
  long not_one_above = 0;
  for (float x = 1e-30f; x < 1e30f; x *= 1.37f) {
    for (int k = 0; k < kLanes; ++k) block[k] = x * float(k + 1);
    const Lanes lanes = exp_poly(Lanes::load(block));
    for (int k = 0; k < kLanes; ++k) not_one_above += (lanes[k] != 1.0f) + (exp_poly(block[k]) != 1.0f);
  }
  std::printf("max_ulp %.3f\nlane_mismatches %ld\nnonzero_below_range %ld\nsamples %ld\n"
              "not_one_above_zero %ld\n",
              max_ulp, lane_mismatches, nonzero_below, samples, not_one_above);
  return 0;
}
