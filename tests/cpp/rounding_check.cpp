// Checks two rounding guarantees of the shared math on the host: splat_power, as a GPU (and the
// emulation, DGRD_EMULATE_FMA) evaluates it, rounds alike whatever the compiler contracts; and
// footprint leaves a zero conic where it culls. Usage: rounding_check SEED.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>

#include "cuda_rasterizer/blend.h"
#include "cuda_rasterizer/preprocess.h"

namespace {

// FNV-1a over a float's bits: one number that says whether two builds computed the same values.
void mix(uint64_t& hash, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  for (int k = 0; k < 4; ++k) hash = (hash ^ ((bits >> (8 * k)) & 0xffu)) * 1099511628211ull;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace dgrd;
  std::mt19937 rng(argc > 1 ? unsigned(std::strtoul(argv[1], nullptr, 10)) : 1u);
  // Inputs from integers by exact conversions and single products, which no contraction
  // touches (std::uniform_real_distribution's a + (b - a) u would itself round apart).
  const auto diagonal = [&] { return float(1 + rng() % (1u << 20)) * 0x1p-19f; };  // (0, 2]
  const auto correlation = [&] { return float(int(rng() % 1901u) - 950) * 0x1p-10f; };
  const auto offset = [&] { return float(int(rng() % (1u << 24)) - (1 << 23)) * 0x1p-18f; };

  // The power as splat_power writes it (the pinned form under DGRD_EMULATE_FMA), and the plain
  // expression it had before, which the compiler may contract as it likes.
  uint64_t pinned = 14695981039346656037ull, plain = pinned;
  const int samples = 200000;
  for (int s = 0; s < samples; ++s) {
    const float a = diagonal(), c = diagonal();
    const float b = correlation() * std::fmin(a, c);  // |b| < min(a, c): positive definite
    const Vec4<float> co = {a, b, c, 0.5f};
    const Vec2<float> d = {offset(), offset()};
    mix(pinned, splat_power(co, d));
    mix(plain, -0.5f * (co.x * d.x * d.x + co.z * d.y * d.y) - co.y * d.x * d.y);
  }
  std::printf("pinned %016llx\nplain %016llx\n", (unsigned long long)pinned,
              (unsigned long long)plain);

  // Covariances whose dilated determinant is exactly 0 under any contraction: dilated diagonals
  // 2^i and 2^(i + j) (j even), off-diagonal 2^(i + j / 2), so every product is exact.
  int degenerate = 0, kept = 0, nonzero_conic = 0;
  for (int i = -6; i <= 6; ++i)
    for (int j = -6; j <= 6; j += 2) {
      const float da = std::ldexp(1.0f, i), dc = std::ldexp(1.0f, i + j);
      const float kernel = float(kDefaultKernelSize);
      const Sym2<float> cov = {da - kernel, std::ldexp(1.0f, i + j / 2), dc - kernel};
      if (cov.a + kernel != da || cov.c + kernel != dc) continue;
      Footprint<float> f;
      const float nan = std::numeric_limits<float>::quiet_NaN();
      f.conic = {nan, nan, nan};
      ++degenerate;
      if (footprint(cov, kernel, false, f)) ++kept;
      if (!(f.conic.a == 0.0f && f.conic.b == 0.0f && f.conic.c == 0.0f)) ++nonzero_conic;
    }
  std::printf("degenerate %d\nkept %d\nnonzero_conic %d\n", degenerate, kept, nonzero_conic);
  return 0;
}
