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
  std::printf("max_ulp %.3f\nlane_mismatches %ld\nnonzero_below_range %ld\nsamples %ld\n",
              max_ulp, lane_mismatches, nonzero_below, samples);
  return 0;
}
