// CUDA kernels of the backend: preprocess, key duplication, sort, tile ranges, render forward and
// backward, preprocess backward. All math comes from the shared headers.
#include "cuda_backend.h"

#ifndef DGRD_EMULATE_CUDA
#include <cub/cub.cuh>
#include <thrust/iterator/permutation_iterator.h>
#endif

#include <algorithm>
#include <type_traits>

#include "blend.h"
#include "cuda_emulation.h"
#include "opacity_field.h"
#include "preprocess.h"
#include "warp_sums.h"

namespace dgrd {
namespace gpu {

namespace {

constexpr int kThreads = 256;  // for one-thread-per-item kernels

int blocks_for(int64_t n) { return int((n + kThreads - 1) / kThreads); }

__global__ void preprocess_kernel(Camera<float> cam, GaussianInputs<float> in,
                                  GaussianState<float> state, DepthKeys depth,
                                  int* radii_out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  bool binned = false;  // the Gaussian has tiles
  if (i < in.count) {
    const ProjectedGaussian<float> g = preprocess_gaussian(cam, in, i);
    state.store_binning(i, g);
    if (state.has_rows()) state.store_row(i, g);  // uniform; else compact_state_kernel's
    radii_out[i] = g.radius;
    binned = g.tile_count() > 0;
    if (depth.keys != nullptr) {  // uniform over the grid
      depth.keys[i] = binned ? depth_sort_key(g.feature.w, cam.inverse_depth) : kUnbinnedDepthKey;
      depth.order[i] = i;
    }
  }
  if (depth.binned != nullptr) {  // uniform; one atomic a warp (every lane reaches the ballot)
    const unsigned voted = __ballot_sync(kFullWarp, binned);
    if ((threadIdx.x & 31) == 0 && voted != 0)
      atomicAdd(reinterpret_cast<unsigned long long*>(depth.binned),
                static_cast<unsigned long long>(__popc(voted)));
  }
}

// The pairs of 32 Gaussians in a row of the scan (by index, or by depth: `order`) lie side by
// side, from offsets[k - 1] to offsets[k] for the k-th: its tiles, row by row of its rectangle.
// The warp writes them together, 32 pairs at a time, each lane one: write(position, Gaussian,
// tile). So neighbouring lanes store to neighbouring addresses, and a Gaussian of many tiles
// does not keep its lane busy while the warp's others idle, where one thread a Gaussian wrote
// its pairs alone (on the H200, 1.0M Gaussians at 1296x840: 102 us at 3% of the SMs'
// throughput, its stores each a sector of their own). Each lane finds the Gaussian of its pair
// by a binary search over the warp's starts (five shuffles); `rank` is that Gaussian's k. Every
// lane of the warp must call it: no lane returns early.
template <typename Write>
__device__ __forceinline__ void write_warp_pairs(int count, const int* order,
                                                 const int64_t* offsets,
                                                 const GaussianState<float>& state, int tiles_x,
                                                 Write write) {
  const int lane = int(threadIdx.x & 31);
  const int k = int(blockIdx.x * blockDim.x + threadIdx.x);
  // Lanes past the count start (and end) where the last Gaussian ends: they own no pair.
  const int64_t end = offsets[min(k, count - 1)];
  const int64_t start = k >= count ? end : k > 0 ? offsets[k - 1] : 0;
  const int id = k < count ? (order ? order[k] : k) : 0;
  TileRect rect = {0, 0, 1, 1};
  if (end > start) rect = state.rects[id];  // a Gaussian without pairs may have none written
  // Positions from the warp's first: a warp's pairs, as all pairs, number under 2^31.
  const int64_t warp_begin = __shfl_sync(kFullWarp, start, 0);
  const int warp_pairs = int(__shfl_sync(kFullWarp, end, 31) - warp_begin);
  const int my_start = int(start - warp_begin);
  for (int base = 0; base < warp_pairs; base += 32) {
    const int q = base + lane;
    // The last lane that starts at or before q: a lane without pairs starts where the next one
    // does, so it is never the last such lane for a q the warp holds.
    int owner = 0;
    for (int step = 16; step > 0; step /= 2)
      if (__shfl_sync(kFullWarp, my_start, owner + step) <= q) owner += step;
    const int local = q - __shfl_sync(kFullWarp, my_start, owner);
    const int gaussian = __shfl_sync(kFullWarp, id, owner);
    const int x0 = __shfl_sync(kFullWarp, rect.x0, owner);
    const int y0 = __shfl_sync(kFullWarp, rect.y0, owner);
    const int width = __shfl_sync(kFullWarp, rect.x1 - rect.x0, owner);
    const int rank = k - lane + owner;
    if (q < warp_pairs)
      write(warp_begin + q, gaussian, rank, (y0 + local / width) * tiles_x + x0 + local % width);
  }
}

__global__ void duplicate_keys_kernel(Camera<float> cam, int count, GaussianState<float> state,
                                      const int64_t* offsets, uint64_t* keys, int* ids) {
  write_warp_pairs(count, nullptr, offsets, state, cam.tiles_x,
                   [&](int64_t p, int i, int, int tile) {
                     keys[p] = (uint64_t(tile) << 32) |
                               depth_sort_key(state.depth(i), cam.inverse_depth);
                     ids[p] = i;
                   });
}

// ---- depth-first binning (CudaTuning::depth_first_sort): the Gaussians sorted by depth once,
// then their pairs, written in that order with the tile alone as key, sorted stably by tile.
// The depth keys come from preprocess_kernel (DepthKeys).

// The k-th Gaussian by depth writes its tiles from offsets[k - 1] on, naming itself by k (its
// row of the compact state) with `by_rank`, else by its index.
__global__ void duplicate_tile_keys_kernel(Camera<float> cam, int count,
                                           GaussianState<float> state, const int* order,
                                           const int64_t* offsets, uint32_t* keys, int* ids,
                                           bool by_rank) {
  write_warp_pairs(count, order, offsets, state, cam.tiles_x,
                   [&](int64_t p, int i, int rank, int tile) {
                     keys[p] = uint32_t(tile);
                     ids[p] = by_rank ? rank : i;
                   });
}

// Row k of the compact state: Gaussian order[k] projected again (gpu::compact_state). The
// preprocess kept its binning alone, so that no row is ever held for the Gaussians without tiles;
// the same function on the same inputs gives the same values.
__global__ void compact_state_kernel(Camera<float> cam, GaussianInputs<float> in, const int* order,
                                     int rows, GaussianState<float> compact, int* gaussians) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= rows) return;
  const int i = order[k];
  gaussians[k] = i;
  compact.store_row(k, preprocess_gaussian(cam, in, i));
}

// The tile of a sorted key: the high half of a (tile, depth) key, or the whole tile key.
__device__ __forceinline__ int key_tile(uint64_t key) { return int(key >> 32); }
__device__ __forceinline__ int key_tile(uint32_t key) { return int(key); }

template <typename Key>
__global__ void tile_ranges_kernel(const Key* keys, int pairs, int* ranges) {
  // 64-bit: with pairs near 2^31 the last block's indices pass INT_MAX.
  const int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= pairs) return;
  const int tile = key_tile(keys[k]);
  if (k == 0) {
    ranges[2 * tile] = 0;
  } else {
    const int prev = key_tile(keys[k - 1]);
    if (tile != prev) {
      ranges[2 * prev + 1] = int(k);
      ranges[2 * tile] = int(k);
    }
  }
  if (k == pairs - 1) ranges[2 * tile + 1] = pairs;
}

// A tile's block: 8 warps, warp w holding rows kWarpRows w .. kWarpRows (w + 1) - 1.
constexpr int kWarps = kTilePixels / 32;
constexpr int kWarpRows = 32 / kTileSize;
constexpr unsigned kAllWarps = (1u << kWarps) - 1;
// Blocks per SM the render kernels are compiled for (their register budget): warp skipping's
// staging would otherwise cost the forward 25% of its occupancy (ptxas, sm_90: 41 registers
// instead of 32; at 8 blocks, 32, with 4-52 bytes spilled in the per-batch staging of every
// variant but the plain render, none in their per-splat loops) and the backward a block
// (67-70 registers instead of 52-64). `check_cuda_compile.py --registers` prints them and
// bounds the spills.
// No more than an SM holds, whose threads are 2048 (sm_70, sm_80, sm_90, sm_100), 1536 (sm_86,
// sm_87, sm_89, sm_120) or 1024 (sm_75): a bound past that is ignored, with a ptxas warning.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 750
constexpr int kSmThreads = 1024;
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ != 700 && __CUDA_ARCH__ != 800 && \
    __CUDA_ARCH__ != 900 && __CUDA_ARCH__ != 1000
constexpr int kSmThreads = 1536;
#else
constexpr int kSmThreads = 2048;
#endif
constexpr int kRenderBlocks = kSmThreads / kTilePixels < 8 ? kSmThreads / kTilePixels : 8;
constexpr int kRenderBackwardBlocks = 4;
// The split forward's second kernel: few of its blocks walk (one per part where pixels stop), and
// at 8 blocks its chains of composites spill 52 bytes (sm_90).
constexpr int kResolveBlocks = 4;
static_assert(kTileSize * kWarpRows == 32, "a warp holds whole rows of its tile");

// The pixel a thread of a tile block owns, where it samples the splats, and its warp.
struct TileThread {
  int tile, x0, y0, x, y, warp;  // (x0, y0): the tile's first pixel
  bool inside;
  Vec2<float> at;  // the sample point: (x, y), or off it by Camera::subpixel_offset
  float margin;    // Camera::sample_margin, for the warps' reach masks
  __device__ explicit TileThread(const Camera<float>& cam) : TileThread(cam, int(blockIdx.x)) {}
  __device__ TileThread(const Camera<float>& cam, int tile_) {
    tile = tile_;
    x0 = (tile % cam.tiles_x) * kTileSize;
    y0 = (tile / cam.tiles_x) * kTileSize;
    x = x0 + int(threadIdx.x) % kTileSize;
    y = y0 + int(threadIdx.x) / kTileSize;
    warp = int(threadIdx.x) / 32;
    inside = x < cam.width && y < cam.height;
    at = inside ? cam.sample_point(x, y) : Vec2<float>{float(x), float(y)};
    margin = cam.sample_margin;
  }
};

// Bit w set: the splat may be blended at some pixel of warp w (band_reach_mask). A clear bit
// lets the warp pass the splat without evaluating it, and changes no pixel.
__device__ __forceinline__ unsigned warp_reach_mask(const TileThread& me, Vec2<float> mean,
                                                    Vec4<float> conic_opacity) {
  return band_reach_mask<kWarpRows>(me.x0, me.y0, mean, conic_opacity, me.margin);
}

// visit(j), in order, for the splats j in [from, n) of a staged batch whose reach mask
// (`reach`, one a splat: band_reach_mask) has warp `warp`'s bit, until visit returns false. The
// warp gathers a bit for each splat that reaches it by a ballot, 32 splats at a time (lane l
// reading splat base + l's mask), and visits the set bits alone: a splat the warp passes costs
// it nothing, where testing each splat's mask in the loop cost about 16 instructions a splat
// (doc/performance.md, "CUDA"). `from` and `warp_n` are the same across the warp; `n` <= warp_n
// is the lane's own (pixels stop at different splats), so visit may hold warp-wide operations
// only where every lane has the same n and visit never returns false. All 32 lanes must call
// it, the pixels that stopped included: a ballot counts only the lanes that have not exited, so
// an exited lane's splats would be left out. Returns false where visit did.
template <typename Visit>
__device__ __forceinline__ bool visit_reaching(const unsigned* reach, int from, int n,
                                               int warp_n, int warp, Visit visit) {
  for (int base = from; base < warp_n; base += 32) {
    const int mine = base + int(threadIdx.x & 31);
    unsigned reaching = __ballot_sync(kFullWarp, mine < warp_n && (reach[mine] >> warp & 1u));
    const int left = n - base;  // the lane's splats from base on
    if (left < 32) reaching &= left > 0 ? (1u << left) - 1u : 0u;
    while (reaching != 0) {
      const int j = base + __ffs(int(reaching)) - 1;
      reaching &= reaching - 1;
      // A lane that stops takes part in the ballots left, with no splats: n = -1 (a flag the
      // loop would test at every splat cost 3 to 4 instructions a splat at 32 registers).
      if (!visit(j)) {
        n = -1;
        break;
      }
    }
  }
  return n >= 0;
}

// The ordered sums of a block (torch.use_deterministic_algorithms: the backward's, the
// contribution statistics'): each warp's
// totals of kValues values for each of a chunk of kRows staged splats, which flush() adds over
// the warps in warp order into the splats' pair rows (PairSums), where atomics would add them in
// the order the warps come. A row of the chunk is zero until a warp writes it, and again once
// flushed. The render backward's: 12 values by 16 splats, 6 KiB of shared memory (4 blocks per
// SM, as the atomic variants, on sm_120 too). The atomic variants declare an empty one.
template <bool kOrdered, int kValues, int kRows>
struct OrderedWarpSums {
  __device__ void clear() {}
};

template <int kValues, int kRows>
struct OrderedWarpSums<true, kValues, kRows> {
  float value[kWarps][kRows][kValues];

  __device__ void clear() {
    float* all = &value[0][0][0];
    for (int e = int(threadIdx.x); e < kWarps * kRows * kValues; e += kTilePixels) all[e] = 0.f;
  }
  // Splats c0 .. c1 - 1 of the staged batch (row j - c0 of the chunk) into row_of(j), their
  // pair rows; every thread of the block calls it, after the chunk's walk.
  template <typename RowOf>
  __device__ void flush(int c0, int c1, RowOf row_of) {
    __syncthreads();  // every warp's totals written
    for (int e = int(threadIdx.x); e < kRows * kValues; e += kTilePixels) {
      const int row = e / kValues, k = e % kValues;
      float total = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        total += value[w][row][k];
        value[w][row][k] = 0.f;
      }
      if (c0 + row < c1) row_of(c0 + row)[k] = total;
    }
    __syncthreads();  // the chunk's rows cleared before the next chunk writes them
  }
};

// The ordered walk of splats [from, n) of a staged batch: chunk by chunk of kRows,
// walk(first, end, each) calling each(j) for the splats j in [first, end) that the warp visits
// (its own walk: every lane calls it), visit(j, j - c0) for each, and sums.flush() after each
// chunk, the same chunks in every warp of the block.
template <int kRows, typename Sums, typename Walk, typename Visit, typename RowOf>
__device__ __forceinline__ void visit_in_chunks(int from, int n, Sums& sums, Walk walk,
                                                Visit visit, RowOf row_of) {
  for (int c0 = 0; c0 < n; c0 += kRows) {
    const int c1 = min(n, c0 + kRows);
    walk(max(from, c0), c1, [&](int j) { visit(j, j - c0); });
    sums.flush(c0, c1, row_of);
  }
}

// A staged splat's mean2d and its Gaussian's index in one 16-byte row, so that the row and the
// splat's exponent (16 bytes too) are found from one address, j x 16, where an 8-byte mean2d
// took an address of its own: sm_90, 1 instruction fewer at every evaluation, and at every
// backward blend, which reads the index. The index is unsigned (all are below 2^31): a pointer
// plus one is then a wide multiply-add without the sign's high word (1 fewer again).
struct alignas(16) MeanAndId {
  Vec2<float> mean2d;
  unsigned id;
  unsigned unused;  // the row's padding
};

// Splats staged in shared memory, kTilePixels at a time, each splat's shape as its exponent in
// base 2 (Base2Exponent: three operations fewer at every evaluation than the conic); `reach`
// (warp_reach_mask) is filled only when the kernel skips by warps.
struct SplatBatch {
  MeanAndId mean_id[kTilePixels];
  Base2Exponent<float> exponent[kTilePixels];
  Vec4<float> feature[kTilePixels];
  unsigned reach[kTilePixels];

  // The splat of state row `row`; `gaussian` is its id where gradients go (the backward's).
  template <bool kWarpSkip>
  __device__ void load(int slot, int row, const GaussianState<float>& s, const TileThread& me,
                       int gaussian = 0) {
    const Vec2<float> mean = s.means2d[row];
    const Vec4<float> conic_opacity = s.conic_opacity[row];
    mean_id[slot] = {mean, unsigned(gaussian), 0u};
    exponent[slot] = Base2Exponent<float>::of(conic_opacity);
    feature[slot] = s.feature(row);
    if (kWarpSkip) reach[slot] = warp_reach_mask(me, mean, conic_opacity);
  }
  // visit(j) for the splats j in [from, n) that reach warp `warp`, in order; `from` and `n`
  // the same across the warp. With kWarpSkip by ballots (visit_reaching), so all 32 lanes must
  // call it.
  template <bool kWarpSkip, typename Visit>
  __device__ __forceinline__ void for_each_reaching(int from, int n, int warp,
                                                    Visit visit) const {
    if constexpr (kWarpSkip) {
      visit_reaching(reach, from, n, n, warp, [&](int j) {
        visit(j);
        return true;
      });
    } else {
      for (int j = from; j < n; ++j) visit(j);
    }
  }
  // The backward's walk: stages list positions [lo, end) of the tile list at `begin` from the
  // back, kTilePixels at a time, and calls visit(stop, n) once each batch is staged (splat j
  // of it at position stop - 1 - j, j < n). Every thread of the block must call it.
  template <bool kWarpSkip, typename Visit>
  __device__ __forceinline__ void walk_back(int begin, int lo, int end, const TileLists& lists,
                                            const GaussianState<float>& s, const TileThread& me,
                                            Visit visit) {
    for (int stop = end; stop > lo; stop -= kTilePixels) {
      const int start = max(lo, stop - kTilePixels);
      __syncthreads();  // the previous batch is no longer read
      const int k = stop - 1 - int(threadIdx.x);
      if (k >= start) {
        const int row = lists.point_list[begin + k];
        load<kWarpSkip>(threadIdx.x, row, s, me, lists.gaussian(row));
      }
      __syncthreads();
      visit(stop, stop - start);
    }
  }
  // Whether splat `slot` blends at the thread's pixel, with its alpha (splat_alpha); the warp's
  // reach is for_each_reaching's to test.
  __device__ __forceinline__ bool alpha_at(int slot, const TileThread& me, float& alpha) const {
    float G;
    Vec2<float> d;
    return splat_alpha(mean_id[slot].mean2d, exponent[slot], me.at.x, me.at.y, alpha, G, d);
  }
};

// One thread per tile: fills the `parts` of the slots whose windows [(e + 1) L, (e + 2) L) start
// in the tile's range (they partition the slots): the part that ends at the tile's split in
// the window, or none. Thread 0 also stores L for the backward (the backward's splits: the
// split forward's own have no header).
__global__ void plan_splits_kernel(int tiles, const int* tile_ranges, TileSplits splits) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t == 0 && splits.header) splits.header[0] = splits.length;
  if (t >= tiles) return;
  const int64_t L = splits.length;
  const int64_t begin = tile_ranges[2 * t], end = tile_ranges[2 * t + 1];
  // Windows starting in [begin, end); slot -1 (the window at 0) does not exist.
  for (int64_t e = (begin + L - 1) / L - 1; e < splits.capacity && (e + 1) * L < end; ++e) {
    if (e < 0) continue;
    // The tile's first split at or after the window's start: begin + m L, m >= 1.
    const int64_t past = (e + 1) * L - begin;  // >= 0
    const int64_t m = past <= L ? 1 : (past + L - 1) / L;
    const int64_t split = begin + m * L;
    const bool here = split < end && split < (e + 2) * L;
    splits.parts[2 * e] = here ? t : -1;
    splits.parts[2 * e + 1] = here ? int(m - 1) : 0;
  }
}

// The cursor of a tile block over its list's splits (TileSplits), in shared memory rather than
// in registers, of which the forward's loop has none to spare (sm_90: 32). `next` is advanced
// by thread 0 once every thread has read it.
struct SplitCursor {
  // Positions: the first split, the next one to pass (`end` when none). `next` ends at most one
  // part past the list's end, which kMaxTilePairs keeps below 2^31.
  int first, next;

  __device__ void start(const TileSplits& splits, int begin, int end) {
    if (threadIdx.x != 0) return;
    first = next = splits.parts_of(end - begin) > 1 ? begin + splits.length : end;
  }
};

// The positions [lo, hi) of a tile's list that one block of a grid of tiles + capacity walks
// (TileSplits, in its order: is_tile_block): a tile's block walks its last part (its
// whole list when it is not split); the block of slot e the part that ends at that split
// (`resume_part` = e; -1 for a tile's block). `valid` is false for a slot whose window holds no
// split. The split forward's parts, the render backward and
// the feature kernels use it; T at the part's ends comes from the state the forward saved at
// the splits.
struct ListPart {
  int tile, begin, parts, part, lo, hi, resume_part;  // part: its index, 0 for the first
  bool valid;
  __device__ ListPart(const Camera<float>& cam, const TileLists& lists,
                      const TileSplits& splits) {
    const int tiles = cam.tiles_x * cam.tiles_y;
    const int b = int(blockIdx.x);
    const bool tile_block = splits.is_tile_block(b, tiles);
    resume_part = tile_block ? -1 : splits.block_slot(b, tiles);
    tile = tile_block ? splits.block_tile(b) : splits.parts[2 * resume_part];
    valid = tile >= 0;
    if (!valid) return;
    begin = lists.tile_ranges[2 * tile];
    const int n = lists.tile_ranges[2 * tile + 1] - begin;
    parts = splits.parts_of(n);
    part = tile_block ? parts - 1 : splits.parts[2 * resume_part + 1];
    lo = part * splits.length;
    hi = tile_block ? n : lo + splits.length;
  }
};

// A pixel's forward walk over its tile's list (the render, and the split forward's second kernel):
// its running state, whether it stopped (saturated, or outside the image), and 1 + the list
// position of its last blend; with kMedian, its median depth.
template <bool kMedian>
struct PixelWalk {
  PixelAccum<float> acc;
  MedianDepth<float> median;
  bool done;
  int visited, n_contrib;  // positions walked (from the list's start), 1 + the last blended

  // From the start of the list, or of a later part at `position` (then n_contrib is the
  // caller's).
  __device__ void start(bool inside, int position) {
    acc.reset();
    if (kMedian) median.reset();
    done = !inside;
    visited = position;
    n_contrib = 0;
  }

  // Splats 0 .. n - 1 of the staged batch, front to back, until the pixel saturates (n may
  // differ between pixels: render_resolve_kernel's). With kWarpSkip by ballots
  // (visit_reaching): every lane takes part, the pixels that stopped included.
  template <bool kWarpSkip>
  __device__ __forceinline__ void blend(const SplatBatch& batch, int n, const TileThread& me) {
    if constexpr (kWarpSkip) {
      const int first = visited, mine = done ? 0 : n;
      // `done` is set after the batch's walk, not in it (visit_reaching says why).
      const bool going = visit_reaching(batch.reach, 0, mine, warp_max(n), me.warp,
                                        [&](int j) { return visit(batch, j, first + j + 1, me); });
      if (!going) done = true;
      if (!done) visited = first + n;
    } else {
      for (int j = 0; !done && j < n; ++j) done = !visit(batch, j, ++visited, me);
    }
  }

  // Splat j of the batch, at list position position - 1 (counted from the list's start);
  // false where it saturates the pixel, which then stops.
  __device__ __forceinline__ bool visit(const SplatBatch& batch, int j, int position,
                                        const TileThread& me) {
    float alpha;
    if (!batch.alpha_at(j, me, alpha)) return true;
    const float before = acc.transmittance;
    if (!acc.blend(alpha, batch.feature[j])) return false;
    n_contrib = position;
    if (kMedian) median.update(before, acc.transmittance, batch.feature[j].w, n_contrib);
    return true;
  }

  __device__ void store_median(const OptionalOutputs<float>& extra, int p) const {
    extra.median[p] = median.depth;
    extra.median_contrib[p] = median.position;
  }
};

// The split forward (CudaTuning::split_forward), first kernel, the blocks past the tiles': the
// block of slot e composites the part that ends at the slot's split alone, from T = 1, into
// the slot (PartComposite), unless it is its tile's first part (the tile's block walks that).
// No pixel stops; the block does once every pixel's own T is below kTransmittanceMin, since a
// pixel that reaches such a part stops within it and walks it anyway.
template <bool kWarpSkip>
__device__ void composite_part(const Camera<float>& cam, const GaussianState<float>& state,
                               const TileLists& lists, const TileSplits& splits,
                               SplatBatch& batch) {
  const ListPart part(cam, lists, splits);
  if (!part.valid || part.part == 0) return;  // the whole block
  const int e = part.resume_part;
  const TileThread me(cam, part.tile);
  const int lo = part.begin + part.lo, hi = part.begin + part.hi;
  PixelAccum<float> acc;
  acc.reset();
  int last = -1;
  for (int start = lo; start < hi; start += kTilePixels) {
    const bool saturated = !me.inside || acc.transmittance < float(kTransmittanceMin);
    if (__syncthreads_count(saturated) == kTilePixels) break;
    batch.load<kWarpSkip>(threadIdx.x, lists.point_list[start + int(threadIdx.x)], state, me);
    __syncthreads();
    batch.for_each_reaching<kWarpSkip>(0, kTilePixels, me.warp, [&](int j) {
      float alpha;
      if (!batch.alpha_at(j, me, alpha)) return;
      acc.accumulate(alpha, batch.feature[j]);
      last = start - lo + j;
    });
  }
  PartComposite<float>::store(splits, e, threadIdx.x, acc, last);
}

// kMedian: also the median depth (issue 12); the plain instantiation is the plain render.
// kWarpSkip: warps pass the splats that cannot reach their pixels (CudaTuning). Without
// kSplitForward (splits: the backward's), a list longer than splits.length saves each pixel's
// state at its splits for the backward. kSplitForward (splits: the forward's own):
// the blocks of a split list's tile walk its first part only, leaving it as the part's
// composite where a pixel goes on past it (render_resolve_kernel finishes those pixels, and
// finds the medians not found here), and the blocks past the tiles' composite the other parts
// (composite_part).
template <bool kMedian, bool kWarpSkip, bool kSplitForward>
__global__ void __launch_bounds__(kTilePixels, kRenderBlocks)
    render_kernel(Camera<float> cam, GaussianState<float> state, TileLists lists,
                  PixelBuffers<float> px, OptionalOutputs<float> extra, TileSplits splits) {
  DGRD_SHARED(SplatBatch, batch);
  DGRD_SHARED(SplitCursor, split);
  // The forward's grids start with the tiles' blocks (parts_first is the backward's; a
  // constant here, so that ListPart's order costs the forward nothing).
  splits.parts_first = false;
  if (kSplitForward && int(blockIdx.x) >= cam.tiles_x * cam.tiles_y) {
    composite_part<kWarpSkip>(cam, state, lists, splits, batch);
    return;
  }
  const TileThread me(cam);
  const int begin = lists.tile_ranges[2 * me.tile];
  int end = lists.tile_ranges[2 * me.tile + 1];
  const bool first_part_only = kSplitForward && splits.parts_of(end - begin) > 1;
  if (first_part_only) end = begin + splits.length;
  split.start(splits, begin, end);
  PixelWalk<kMedian> walk;
  walk.start(me.inside, 0);
  for (int start = begin; start < end; start += kTilePixels) {
    // The whole block stops once every pixel is saturated (also a barrier after the cursor's
    // writes).
    if (__syncthreads_count(walk.done) == kTilePixels) break;
    if (start == split.next) walk.acc.save_split(splits, splits.slot_of(start), threadIdx.x);
    const int k = start + int(threadIdx.x);
    if (k < end) batch.load<kWarpSkip>(threadIdx.x, lists.point_list[k], state, me);
    __syncthreads();
    if (threadIdx.x == 0 && start == split.next) split.next += splits.length;  // all have read it
    walk.template blend<kWarpSkip>(batch, min(kTilePixels, end - start), me);
  }
  // The splits passed (one the block stopped before is never read: every pixel ends in front
  // of it).
  __syncthreads();  // after the cursor's last advance
  for (int at = split.first; at < split.next; at += splits.length)
    walk.acc.finish_split(splits, splits.slot_of(at), threadIdx.x);
  const int p = me.y * cam.width + me.x;
  if (first_part_only) {
    PartComposite<float>::store(splits, splits.slot_of(end), threadIdx.x, walk.acc,
                                walk.n_contrib - 1, walk.done);
    if (!walk.done) {
      // The pixel goes on: render_resolve_kernel finishes it. A median found here is final (T
      // only decreases); one still to come is the resolve's to find.
      if (kMedian && me.inside && walk.median.position > 0) walk.store_median(extra, p);
      return;
    }
  }
  if (me.inside) {
    walk.acc.store(px, p, cam.width * cam.height, cam.background, walk.n_contrib);
    if (kMedian) walk.store_median(extra, p);
  }
}

// The split forward's second kernel: one block per part after the first of each split list
// (block b < tiles: tile b's last part; block tiles + e: the part that ends at slot e's split).
// Each pixel chains the composites of the parts in front of the block's (PixelAccum::append)
// until one may stop it. The block whose part that is walks the part for the pixel, splat by
// splat from its true state there, as the render does, and writes its outputs and, for the
// backward, its state at every split in front (save_split, finish_split); the last part's
// block does so for the pixels that no part stops. kMedian: likewise the block of the part
// where the chain takes T from above 0.5 to 0.5 or below (or that stops the pixel, or the
// last) walks it for the median, on past its end in the rare pixel where rounding puts the
// crossing later, and writes the median (0 where there is none); every block decides by the
// same chain, so exactly one writes it (the first kernel, where the first part crosses).
template <bool kMedian, bool kWarpSkip>
__global__ void __launch_bounds__(kTilePixels, kResolveBlocks)
    render_resolve_kernel(Camera<float> cam, GaussianState<float> state, TileLists lists,
                         PixelBuffers<float> px, OptionalOutputs<float> extra,
                         TileSplits splits) {
  DGRD_SHARED(SplatBatch, batch);
  splits.parts_first = false;  // as render_kernel's
  const ListPart list_part(cam, lists, splits);
  // The whole block, here and below: the first kernel walked first parts and whole lists.
  if (!list_part.valid || list_part.part == 0) return;
  const int begin = list_part.begin, end = lists.tile_ranges[2 * list_part.tile + 1];
  const int parts = list_part.parts, part = list_part.part;
  const TileThread me(cam, list_part.tile);
  const int L = splits.length;

  // The pixel's state in front of `part`, if no part before stops it. The first part's
  // composite is its true state at the first split (T >= kTransmittanceMin there: appended
  // onto T = 1, it is that state exactly).
  PartComposite<float> composite;
  composite.load(splits, splits.slot_after(begin, 0), threadIdx.x);
  bool reached = me.inside && !composite.stopped();
  PixelWalk<kMedian> walk;
  walk.start(reached, part * L);
  for (int q = 0; reached && q < part; ++q) {
    if (q > 0) composite.load(splits, splits.slot_after(begin, q), threadIdx.x);
    reached = walk.acc.append(composite);
    if (reached && composite.last >= 0) walk.n_contrib = q * L + composite.last + 1;
  }
  // By the chain, whether the part may stop the pixel (`mine`: the block finishes it) and
  // whether T may reach 0.5 in it; the last part takes every pixel that reaches it.
  bool mine = reached, crosses = reached;
  if (reached && part < parts - 1) {
    composite.load(splits, splits.slot_after(begin, part), threadIdx.x);
    const float after = walk.acc.transmittance * composite.transmittance;
    mine = after < float(kTransmittanceMin);
    crosses = after <= 0.5f;
  }
  const bool seeks_median = kMedian && crosses && walk.acc.transmittance > 0.5f;
  const bool seeks_only = seeks_median && !mine;  // walks on until it finds the median

  // The part, walked for the pixels it is to finish or find the median of.
  const int lo = begin + list_part.lo, hi = begin + list_part.hi;
  walk.done = !(mine || seeks_median);
  for (int start = lo; start < (kMedian ? end : hi); start += kTilePixels) {
    if (__syncthreads_count(walk.done) == kTilePixels) break;
    const int k = start + int(threadIdx.x);
    if (k < end) batch.load<kWarpSkip>(threadIdx.x, lists.point_list[k], state, me);
    __syncthreads();
    const int stop = seeks_only ? end : hi;
    // Every lane calls it (with no splats past its stop): a lane that skipped it would run on
    // to the kernel's end and exit, and the warp's ballots would lack its bits.
    walk.template blend<kWarpSkip>(batch, max(0, min(kTilePixels, stop - start)), me);
    if (start + kTilePixels >= stop || (seeks_only && walk.median.position > 0))
      walk.done = true;
  }
  const int p = me.y * cam.width + me.x;
  if (seeks_median) walk.store_median(extra, p);
  if (!mine) return;
  PixelAccum<float>& acc = walk.acc;
  acc.store(px, p, cam.width * cam.height, cam.background, walk.n_contrib);
  // The state at each of the backward's splits in front of the part (every state_every-th of
  // the forward's), by the same chain.
  PixelAccum<float> front;
  front.reset();
  for (int q = 0; q < part; ++q) {
    composite.load(splits, splits.slot_after(begin, q), threadIdx.x);
    front.append(composite);
    if ((q + 1) % splits.state_every != 0) continue;
    const int e = splits.state_slot(begin + int64_t(q + 1) * L);
    front.save_split(splits, e, threadIdx.x);
    acc.finish_split(splits, e, threadIdx.x);
  }
}

// The largest n_contrib of the block's pixels (`last`: the thread's own, 0 outside the image):
// no splat behind it is visited.
__device__ __forceinline__ int block_max(int last) {
  DGRD_SHARED(int, block_last);
  if (threadIdx.x == 0) block_last = 0;
  __syncthreads();
  atomicMax(&block_last, last);
  __syncthreads();
  const int result = block_last;
  __syncthreads();  // before anyone may reset block_last again
  return result;
}

// Splats (their shapes as in SplatBatch) and a chunk of kChunk of their feature channels,
// staged in shared memory. Rows are padded by one so that each thread's staging writes fall in
// distinct banks; reads of one splat's row by the whole block are broadcasts. Channels past the
// count are staged as 0.
template <int kChunk>
struct FeatureBatch {
  MeanAndId mean_id[kTilePixels];  // as SplatBatch's
  Base2Exponent<float> exponent[kTilePixels];
  float feature[kTilePixels][kChunk + 1];
  unsigned reach[kTilePixels];  // warp_reach_mask, or every warp when not skipping

  // The splat of state row `row`, Gaussian `gaussian` (its features and gradients).
  __device__ void load(int slot, int row, int gaussian, const GaussianState<float>& s,
                       const float* features, const TileThread& me, int channels, int first,
                       int count, bool warp_skip) {
    const Vec2<float> mean = s.means2d[row];
    const Vec4<float> conic_opacity = s.conic_opacity[row];
    mean_id[slot] = {mean, unsigned(gaussian), 0u};
    exponent[slot] = Base2Exponent<float>::of(conic_opacity);
    const float* values = features + int64_t(gaussian) * channels + first;
#pragma unroll
    for (int c = 0; c < kChunk; ++c) feature[slot][c] = c < count ? values[c] : 0.f;
    reach[slot] = warp_skip ? warp_reach_mask(me, mean, conic_opacity) : kAllWarps;
  }
};

// A thread of a feature kernel: its pixel, the block's chunk of channels [first, first + count)
// (blockIdx.y picks the chunk), and how far, within the block's part of the list, the pixel's,
// the warp's and the block's walks go.
template <int kChunk>
struct FeatureThread : TileThread {
  int first, count, p, last, warp_end, block_end;
  int64_t plane;

  __device__ FeatureThread(const Camera<float>& cam, const ListPart& part,
                           const PixelBuffers<float>& px, int channels)
      : TileThread(cam, part.tile) {
    first = int(blockIdx.y) * kChunk;
    count = min(kChunk, channels - first);
    plane = int64_t(cam.width) * cam.height;
    p = y * cam.width + x;
    last = inside ? px.n_contrib[p] : 0;
    block_end = min(part.hi, block_max(last));
    warp_end = min(part.hi, warp_max(last));
  }
  // Whether the pixel blends splats in the part.
  __device__ bool walks(const ListPart& part) const { return last > part.lo; }
};

// T of the pixel at the start of its part: 1 at the list's start, else what the forward saved
// at the part's split (read only where the pixel walks the part: elsewhere it may be unset).
template <int kChunk>
__device__ float part_start_transmittance(const FeatureThread<kChunk>& me, const ListPart& part,
                                          const TileSplits& splits) {
  if (part.lo == 0 || !me.walks(part)) return 1.f;
  return splits.value(splits.slot_of(part.begin + part.lo), 0, threadIdx.x);
}

// The front-to-back walk of a feature kernel over its part of the list, up to each pixel's last
// blended splat: on_splat(j, alpha, T) for every splat the pixel blends, T before it.
template <int kChunk, typename OnSplat>
__device__ __forceinline__ void walk_feature_part(const FeatureThread<kChunk>& me,
                                                  const ListPart& part, float transmittance,
                                                  FeatureBatch<kChunk>& batch,
                                                  const GaussianState<float>& state,
                                                  const TileLists& lists, const float* features,
                                                  int channels, bool warp_skip, OnSplat on_splat) {
  for (int start = part.lo; start < me.block_end; start += kTilePixels) {
    __syncthreads();  // the previous batch is no longer read
    const int k = start + int(threadIdx.x);
    if (k < me.block_end) {
      const int row = lists.point_list[part.begin + k];
      batch.load(threadIdx.x, row, lists.gaussian(row), state, features, me, channels, me.first,
                 me.count, warp_skip);
    }
    __syncthreads();
    // The pixel's splats of the batch, and the warp's (its pixels' largest count).
    const int n = min(kTilePixels, min(me.last, part.hi) - start);
    const int warp_n = min(kTilePixels, me.warp_end - start);
    visit_reaching(batch.reach, 0, n, warp_n, me.warp, [&](int j) {
      float alpha, G;
      Vec2<float> d;
      if (splat_alpha(batch.mean_id[j].mean2d, batch.exponent[j], me.at.x, me.at.y, alpha,
                      G, d)) {
        on_splat(j, alpha, transmittance);
        transmittance = transmittance * (1.f - alpha);
      }
      return true;
    });
  }
}

// Channel `channel` of the sums of the part that ends at split `slot`, at the thread's pixel
// (extra.feature_parts).
__device__ __forceinline__ float& feature_part_sum(const OptionalOutputs<float>& extra, int slot,
                                                   int channel) {
  return extra.feature_parts[(int64_t(slot) * extra.channels + channel) * kTilePixels +
                             threadIdx.x];
}

// The feature map, kChunk channels per block (blockIdx.y picks the chunk): the block walks its
// part of its tile's list (ListPart: the whole list unless the forward splits the feature map)
// again up to each pixel's last blended splat (n_contrib of the render), so the weights, and
// which splats are blended, are the render's; registers hold one chunk of sums. A tile's block
// writes its sums to the feature map; the block of a part that ends at split e, to slot e of
// extra.feature_parts, which combine_feature_parts_kernel then adds in front of the last part's,
// in list order. warp_skip as kWarpSkip of render_kernel.
template <int kChunk>
__global__ void __launch_bounds__(kTilePixels)
    render_features_kernel(Camera<float> cam, GaussianState<float> state, TileLists lists,
                           PixelBuffers<float> px, OptionalOutputs<float> extra,
                           TileSplits splits, bool warp_skip) {
  DGRD_SHARED(FeatureBatch<kChunk>, batch);
  const ListPart part(cam, lists, splits);
  if (!part.valid) return;  // the whole block
  const FeatureThread<kChunk> me(cam, part, px, extra.channels);
  float sum[kChunk];
#pragma unroll
  for (int c = 0; c < kChunk; ++c) sum[c] = 0.f;
  walk_feature_part(me, part, part_start_transmittance(me, part, splits), batch, state, lists,
                    extra.features, extra.channels, warp_skip,
                    [&](int j, float alpha, float transmittance) {
                      blend_features(sum, batch.feature[j], kChunk, alpha * transmittance);
                    });
  if (!me.inside) return;
  for (int c = 0; c < me.count; ++c) {
    if (part.resume_part < 0)
      extra.feature_map[(me.first + c) * me.plane + me.p] = sum[c];
    else
      feature_part_sum(extra, part.resume_part, me.first + c) = sum[c];
  }
}

// The feature map of a split list: the sums of the parts in front of its last (in the slots of
// the splits that end them, extra.feature_parts) added in list order, then the last part's,
// which the tile's block wrote into the map.
template <int kChunk>
__global__ void __launch_bounds__(kTilePixels)
    combine_feature_parts_kernel(Camera<float> cam, TileLists lists,
                                 OptionalOutputs<float> extra, TileSplits splits) {
  const TileThread me(cam);
  const int begin = lists.tile_ranges[2 * me.tile];
  const int parts = splits.parts_of(lists.tile_ranges[2 * me.tile + 1] - begin);
  if (parts == 1 || !me.inside) return;
  const int first = int(blockIdx.y) * kChunk, count = min(kChunk, extra.channels - first);
  const int64_t plane = int64_t(cam.width) * cam.height;
  const int p = me.y * cam.width + me.x;
  for (int c = 0; c < count; ++c) {
    float total = 0.f;
    for (int q = 0; q + 1 < parts; ++q) {
      const int slot = splits.slot_after(begin, q);
      total += feature_part_sum(extra, slot, first + c);
    }
    float& map = extra.feature_map[(first + c) * plane + p];
    map = total + map;
  }
}

// The touch count (`touches`, blend.h: MonoGS's n_touched), one block per tile: each pixel walks
// the tile's whole list from T = 1, as the render's whole-list walk does, up to its first
// blended splat that does not touch it, and the block stops once none of its pixels walks.
// A batch's touches are counted per splat in shared memory, then added to the Gaussian's
// count by one atomic per splat and tile. Only where the caller asks for the count.

// The splats of a batch as the walks after the render read them (the touch count, the
// contribution statistics): each one's mean, Gaussian and exponent. Not SplatBatch: they read no
// colours (the state they are handed holds none where the caller gave them).
struct WalkSplats {
  MeanAndId mean_id[kTilePixels];
  Base2Exponent<float> exponent[kTilePixels];

  // This thread's splat of the batch: list entry k.
  __device__ void stage(const GaussianState<float>& state, const TileLists& lists, int k) {
    const int row = lists.point_list[k];
    mean_id[threadIdx.x] = {state.means2d[row], unsigned(lists.gaussian(row)), 0u};
    exponent[threadIdx.x] = Base2Exponent<float>::of(state.conic_opacity[row]);
  }
  __device__ bool alpha(int j, const TileThread& me, float& alpha) const {
    float G;
    Vec2<float> d;
    return splat_alpha(mean_id[j].mean2d, exponent[j], me.at.x, me.at.y, alpha, G, d);
  }
};

struct TouchBatch {
  WalkSplats splats;
  int touches[kTilePixels];
};

__global__ void __launch_bounds__(kTilePixels)
    touch_count_kernel(Camera<float> cam, GaussianState<float> state, TileLists lists,
                       int* touch_count) {
  DGRD_SHARED(TouchBatch, batch);
  const TileThread me(cam);
  const int begin = lists.tile_ranges[2 * me.tile], end = lists.tile_ranges[2 * me.tile + 1];
  float transmittance = 1.f;
  bool walking = me.inside;
  for (int start = begin; start < end; start += kTilePixels) {
    // Also the barrier after the previous batch's counts were read.
    if (__syncthreads_count(walking) == 0) break;
    const int k = start + int(threadIdx.x);
    if (k < end) batch.splats.stage(state, lists, k);
    batch.touches[threadIdx.x] = 0;
    __syncthreads();
    const int n = min(kTilePixels, end - start);
    for (int j = 0; walking && j < n; ++j) {
      float alpha;
      if (!batch.splats.alpha(j, me, alpha)) continue;
      const float after = transmittance * (1.f - alpha);
      walking = touches(after);
      if (!walking) break;
      transmittance = after;
      atomicAdd(&batch.touches[j], 1);
    }
    __syncthreads();
    if (k < end && batch.touches[threadIdx.x] > 0)
      atomicAdd(&touch_count[batch.splats.mean_id[threadIdx.x].id], batch.touches[threadIdx.x]);
  }
}

// The contribution statistics (blend.h: kContributionValues a Gaussian), one block per tile:
// each pixel walks the tile's whole list from T = 1 as the render does, blending up to its first
// splat that would saturate it, and the block stops once none of its pixels walks. A batch's
// weights are tallied per splat in shared memory (the largest as its bits: weights are >= 0, so
// they order as integers), then added to the Gaussian's by one atomic a value per splat and tile;
// each pixel adds its dominant splat's one at the end and writes that Gaussian's index to
// dominant_map (-1: nothing blended). Only where the caller asks for them.
struct ContributionBatch {
  WalkSplats splats;
  float weight_sum[kTilePixels];
  int weight_max[kTilePixels];  // the bits of a float >= 0
  int pixels[kTilePixels];
  float opacity_transmittance[kTilePixels];
};

// kOrdered (torch.use_deterministic_algorithms): the weight sums and opacity-transmittance sums,
// which float atomics would add in any order, go instead through each warp's sums into
// OrderedWarpSums and, per pair, into ordered_rows (pairs x 2) for gather_contributions_kernel;
// the counts and maxima, exact in any order, stay atomic.
template <bool kOrdered>
__global__ void __launch_bounds__(kTilePixels)
    contribution_kernel(Camera<float> cam, GaussianState<float> state, TileLists lists,
                        float* contribution, int* dominant_map, float* ordered_rows) {
  DGRD_SHARED(ContributionBatch, batch);
  using Ordered = OrderedWarpSums<kOrdered, 2, kTilePixels>;
  DGRD_SHARED(Ordered, ordered);
  if constexpr (kOrdered) ordered.clear();  // the batch loop's first barrier comes before a write
  const int ordered_slot = kOrdered ? scatter_slot<2>(2) : -1;
  const TileThread me(cam);
  const int begin = lists.tile_ranges[2 * me.tile], end = lists.tile_ranges[2 * me.tile + 1];
  float transmittance = 1.f;
  bool walking = me.inside;
  DominantSplat<float, unsigned> dominant;  // its Gaussian
  for (int start = begin; start < end; start += kTilePixels) {
    // Also the barrier after the previous batch's tallies were read.
    if (__syncthreads_count(walking) == 0) break;
    const int k = start + int(threadIdx.x);
    if (k < end) batch.splats.stage(state, lists, k);
    batch.weight_sum[threadIdx.x] = 0.f;
    batch.weight_max[threadIdx.x] = 0;
    batch.pixels[threadIdx.x] = 0;
    batch.opacity_transmittance[threadIdx.x] = 0.f;
    __syncthreads();
    const int n = min(kTilePixels, end - start);
    // Splat j at the thread's pixel, while it walks: add(w, o T) where it blends.
    const auto tally = [&](int j, auto add) {
      float alpha;
      if (!batch.splats.alpha(j, me, alpha)) return;
      const float after = transmittance * (1.f - alpha);
      walking = !(after < float(kTransmittanceMin));  // PixelAccum::blend's test
      if (!walking) return;
      const float w = alpha * transmittance;  // as PixelAccum::accumulate weighs it
      // The opacity as the render multiplies it (Base2Exponent keeps it as it is).
      add(w, batch.splats.exponent[j].coefficients.w * transmittance);
      atomicMax(&batch.weight_max[j], __float_as_int(w));
      atomicAdd(&batch.pixels[j], 1);
      dominant.update(w, batch.splats.mean_id[j].id);
      transmittance = after;
    };
    if constexpr (!kOrdered) {
      for (int j = 0; walking && j < n; ++j)
        tally(j, [&](float w, float ot) {
          atomicAdd(&batch.weight_sum[j], w);
          atomicAdd(&batch.opacity_transmittance[j], ot);
        });
    } else {
      // Every lane of a warp at the same splat while any walks, for the warp's sums.
      for (int j = 0; j < n && __any_sync(kFullWarp, walking); ++j) {
        float v[2] = {0.f, 0.f};
        if (walking) tally(j, [&](float w, float ot) { v[0] = w, v[1] = ot; });
        const float total = warp_scatter_total(v);
        if (ordered_slot >= 0) ordered.value[me.warp][j][ordered_slot] = total;
      }
      ordered.flush(0, n, [&](int j) { return ordered_rows + int64_t(start + j) * 2; });
    }
    __syncthreads();
    if (k < end && batch.pixels[threadIdx.x] > 0) {
      float* out =
          contribution + size_t(batch.splats.mean_id[threadIdx.x].id) * kContributionValues;
      if (!kOrdered) atomicAdd(out, batch.weight_sum[threadIdx.x]);
      atomicMax(reinterpret_cast<int*>(out + 1), batch.weight_max[threadIdx.x]);
      atomicAdd(out + 2, float(batch.pixels[threadIdx.x]));
      if (!kOrdered) atomicAdd(out + 4, batch.opacity_transmittance[threadIdx.x]);
    }
  }
  if (dominant.found()) atomicAdd(contribution + size_t(dominant.id) * kContributionValues + 3, 1.f);
  if (me.inside)
    dominant_map[size_t(me.y) * cam.width + me.x] = dominant.found() ? int(dominant.id) : -1;
}

// The opacity field (opacity_field.h): one thread a point for its row and tile, one a Gaussian
// for its ray quadric, then one block a tile, each thread walking the tile's list for one of the
// tile's points (as many rounds of 256 as the tile has points), the splats staged in shared
// memory a batch at a time as the render stages them; the block leaves a round's list once none
// of its points walks.
__global__ void project_points_kernel(Camera<float> cam, const float* points, int count,
                                      PointOnScreen<float>* rows, int* keys, float* opacity) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= count) return;
  int tile = 0;
  PointOnScreen<float> pt = {};
  const bool seen = project_point(cam, load3(points, i), pt, tile);
  rows[i] = pt;
  keys[i] = seen ? tile : cam.tiles_x * cam.tiles_y;
  if (!seen) opacity[i] = 1.f;
}

__global__ void ray_quadrics_kernel(Camera<float> cam, GaussianInputs<float> in,
                                    RayQuadric<float>* quadrics) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < in.count) quadrics[i] = ray_quadric(cam, in, i);
}

struct PointBatch {
  Vec2<float> mean2d[kTilePixels];
  Base2Exponent<float> exponent[kTilePixels];
  RayQuadric<float> quadric[kTilePixels];
};

__global__ void __launch_bounds__(kTilePixels)
    point_opacity_kernel(GaussianState<float> state, TileLists lists,
                         const RayQuadric<float>* quadrics, const PointOnScreen<float>* points,
                         const int* order, const int* point_ranges, float* opacity) {
  DGRD_SHARED(PointBatch, batch);
  const int tile = int(blockIdx.x);
  const int begin = lists.tile_ranges[2 * tile], end = lists.tile_ranges[2 * tile + 1];
  const int first = point_ranges[tile], last = point_ranges[tile + 1];
  for (int round = first; round < last; round += kTilePixels) {
    const int k = round + int(threadIdx.x);
    const bool mine = k < last;
    const int id = mine ? order[k] : 0;
    PointOnScreen<float> pt = {};
    if (mine) pt = points[id];
    PointTransmittance<float> transmittance;
    transmittance.walking = mine;
    for (int start = begin; start < end; start += kTilePixels) {
      // Also the barrier after the previous batch (or round) was read.
      if (__syncthreads_count(transmittance.walking) == 0) break;
      const int j = start + int(threadIdx.x);
      if (j < end) {
        const int row = lists.point_list[j];
        batch.mean2d[threadIdx.x] = state.means2d[row];
        batch.exponent[threadIdx.x] = Base2Exponent<float>::of(state.conic_opacity[row]);
        batch.quadric[threadIdx.x] = quadrics[lists.gaussian(row)];
      }
      __syncthreads();
      const int n = min(kTilePixels, end - start);
      for (int b = 0; transmittance.walking && b < n; ++b) {
        float alpha;
        if (point_alpha(batch.mean2d[b], batch.exponent[b], batch.quadric[b], pt, alpha))
          transmittance.blend(alpha);
      }
    }
    if (mine) opacity[id] = 1.f - transmittance.value;
  }
}

// A lane's own total of the scatter (warp_scatter_total) and where it adds it, taken once
// before a kernel's loops: value `slot` of SplatSums (null for a slot past them, or none).
struct SumLane {
  float* value = nullptr;
  uint32_t row_bytes = 0;  // 0: the lane holds none

  __device__ __forceinline__ bool holds() const { return row_bytes != 0; }
  __device__ __forceinline__ float* at(int i) const { return SplatSums::row(value, row_bytes, i); }
};

__device__ __forceinline__ SumLane sum_lane(const SplatSums& sums, int slot) {
  SumLane lane;
#pragma unroll
  for (int k = 0; k < kSplatGradValues; ++k)  // selects: the parameters stay in their bank
    if (slot == k) lane = {sums.value[k], sums.row_bytes[k]};
  return lane;
}

// Adds a SplatGrad summed over the warp to Gaussian id's sums: one set of atomics per warp
// instead of one per pixel. With kScatter, `lane` is the lane's sum_lane of its scatter_slot.
template <bool kScatter>
__device__ __forceinline__ void warp_accumulate(const SplatGrad<float>& g, const SplatSums& sums,
                                                int id, SumLane lane) {
  const float v[kSplatGradValues] = {g.mean2d.x, g.mean2d.y, g.conic.a, g.conic.b, g.conic.c,
                                     g.opacity, g.feature.x, g.feature.y, g.feature.z,
                                     g.feature.w};
  if constexpr (kScatter) {
    const float total = warp_scatter_total(v);
    if (lane.holds()) atomicAdd(lane.at(id), total);
  } else {
    warp_add_each<false>(v, [&](int k) { return sums.at(k, id); });
  }
}

// Gaussian i's sums, read whole before any of the rows they lie in is written.
__device__ __forceinline__ SplatGrad<float> read_splat_sums(const SplatSums& sums, int i) {
  SplatGrad<float> g;
  g.mean2d = {*sums.at(0, i), *sums.at(1, i)};
  g.conic = {*sums.at(2, i), *sums.at(3, i), *sums.at(4, i)};
  g.opacity = *sums.at(5, i);
  g.feature = {*sums.at(6, i), *sums.at(7, i), *sums.at(8, i), *sums.at(9, i)};
  return g;
}

__global__ void clear_splat_sums_kernel(SplatSums sums, int count) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= count) return;
#pragma unroll
  for (int k = 0; k < kSplatGradValues; ++k) *sums.at(k, i) = 0.f;
}

// Lane 0 adds the warp's sum of v to *out.
__device__ __forceinline__ void warp_add(float v, float* out) {
  v = warp_sum(v);
  if ((threadIdx.x & 31) == 0) atomicAdd(out, v);
}

// kMedian: the median's upstream gradient goes to its splat's depth. kWarpSkip: each warp starts
// at its own pixels' last contributor and passes the splats that cannot reach them; kScatter:
// the warp sums go by warp_scatter_add (CudaTuning). Each block walks one part of a tile's
// list (ListPart); a pixel whose walk ends in front of the part takes no part in it. With
// extra.mean2d_abs (AbsGS), a runtime test rather than a template flag: a uniform branch costs
// the default call nothing measurable, and eight more instantiations would cost every build.
template <bool kMedian, bool kWarpSkip, bool kScatter, bool kOrdered>
__global__ void __launch_bounds__(kTilePixels, kRenderBackwardBlocks)
    render_backward_kernel(Camera<float> cam, GaussianState<float> state, TileLists lists,
                           PixelBuffers<float> px, PixelGrads<float> grads,
                           OptionalGrads<float> extra, SplatSums sums, TileSplits splits,
                           PairSums pairs) {
  DGRD_SHARED(SplatBatch, batch);
  using Ordered = OrderedWarpSums<kOrdered, kPairValues, 16>;
  DGRD_SHARED(Ordered, ordered);
  if constexpr (kOrdered) ordered.clear();  // walk_back's first barrier comes before any write
  splits.load_length();
  const ListPart part(cam, lists, splits);
  if (!part.valid) return;  // the whole block
  const TileThread me(cam, part.tile);
  const int begin = part.begin;
  const int plane = cam.width * cam.height;
  const int p = me.y * cam.width + me.x;
  const int last = me.inside ? px.n_contrib[p] : 0;
  const bool walks = last > part.lo;
  const int median_position = kMedian && me.inside ? extra.median_contrib[p] : 0;
  const float median_grad = kMedian && me.inside ? extra.median[p] : 0.f;

  PixelBackward<float> pb = {};  // zeros where the pixel does not walk: its steps change nothing
  if (walks) {
    pb.init(px, grads, p, plane, cam.background);
    if (last > part.hi) pb.resume(splits, part.resume_part, threadIdx.x);
  }
  // Splats behind every pixel's last contributor are never visited; with kWarpSkip, a warp
  // starts at its own last one (the median's splat is never behind it).
  const int block_end = min(part.hi, block_max(last));
  const int warp_end = min(part.hi, kWarpSkip ? warp_max(last) : block_end);
  const SumLane lane =
      kScatter ? sum_lane(sums, scatter_slot<kSplatGradValues>(kSplatGradValues)) : SumLane{};
  const int ordered_slot = kOrdered ? scatter_slot<kPairValues>(kPairValues) : -1;

  // Positions are relative to `begin`. Splat j of a staged batch, its row `row` of the ordered
  // chunk.
  const auto step = [&](int stop, int j, int row) {
    const int pos = stop - 1 - j;
    float alpha, G;
    Vec2<float> d;
    const bool blends = splat_alpha(batch.mean_id[j].mean2d, batch.exponent[j], me.at.x,
                                    me.at.y, alpha, G, d) & (pos < last);
    const bool median_splat = kMedian && pos + 1 == median_position;
    if (!__any_sync(kFullWarp, blends | median_splat)) return;
    // Every lane steps; one whose pixel does not blend the splat changes nothing and adds 0
    // (step_if), where a zeroed SplatGrad and a branch cost 10 instructions a splat.
    SplatGrad<float> g;
    pb.step_if(blends, alpha, G, d, batch.exponent[j], batch.feature[j], g);
    if (median_splat) g.feature.w += median_grad;
    if constexpr (kOrdered) {
      // The ten values and AbsGS's two (summed whether asked for or not: the gather reads
      // them only where they are); the warp's totals into its row of the chunk.
      const Vec2<float> a = abs_each(g.mean2d);
      const float v[kPairValues] = {g.mean2d.x,  g.mean2d.y,  g.conic.a,   g.conic.b,
                                    g.conic.c,   g.opacity,   g.feature.x, g.feature.y,
                                    g.feature.z, g.feature.w, a.x,         a.y};
      const float total = warp_scatter_total(v);
      if (ordered_slot >= 0) ordered.value[me.warp][row][ordered_slot] = total;
      return;
    }
    warp_accumulate<kScatter>(g, sums, batch.mean_id[j].id, lane);
    if (extra.mean2d_abs) {  // the same for the whole grid: asked for or not
      // g.mean2d is the pixel's whole part: asked for here only without feature channels
      // (with them, render_absolute_grad_kernel's). The median adds to z alone.
      const Vec2<float> a = abs_each(g.mean2d);
      const float v[2] = {a.x, a.y};
      Vec2<float>* out = extra.mean2d_abs + batch.mean_id[j].id;
      warp_add_each<kScatter>(v, [out](int k) { return &out->x + k; });
    }
  };
  batch.walk_back<kWarpSkip>(begin, part.lo, block_end, lists, state, me, [&](int stop, int n) {
    // pos = stop - 1 - j < warp_end from j = stop - warp_end on.
    const int from = max(0, stop - warp_end);
    if constexpr (!kOrdered) {
      batch.for_each_reaching<kWarpSkip>(from, n, me.warp, [&](int j) { step(stop, j, 0); });
    } else {
      visit_in_chunks<16>(
          from, n, ordered,
          [&](int first, int end, auto each) {
            batch.for_each_reaching<kWarpSkip>(first, end, me.warp, each);
          },
          [&](int j, int row) { step(stop, j, row); },
          [&](int j) { return pairs.rows + int64_t(begin + stop - 1 - j) * kPairValues; });
    }
  });
}

// The ordered backward's second pass: Gaussian i's sums, its pairs' rows added in list order
// (order[starts[i]] .. order[starts[i + 1] - 1]: the pairs sorted by Gaussian, stably), each
// pair's maps row, then its feature chunks' six splat values in chunk order; into its SplatSums
// and, where asked for, AbsGS's statistic (from the absolute kernel's rows where there are
// feature channels). Every Gaussian's sums are written.
__global__ void gather_pair_sums_kernel(int count, PairSums pairs, SplatSums sums,
                                        Vec2<float>* mean2d_abs) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= count) return;
  float total[kPairValues] = {};
  const int feature_row = 6 + pairs.feature_chunk;
  for (int64_t q = pairs.starts[i]; q < pairs.starts[i + 1]; ++q) {
    const int64_t pair = pairs.order[q];
    const float* row = pairs.rows + pair * kPairValues;
#pragma unroll
    for (int k = 0; k < kPairValues; ++k) total[k] += row[k];
    for (int chunk = 0; chunk < pairs.feature_chunks; ++chunk) {
      const float* splat = pairs.feature_rows + (pair * pairs.feature_chunks + chunk) * feature_row;
#pragma unroll
      for (int k = 0; k < 6; ++k) total[k] += splat[k];
    }
  }
  if (pairs.absolute_rows) {
    total[kSplatGradValues] = total[kSplatGradValues + 1] = 0.f;
    for (int64_t q = pairs.starts[i]; q < pairs.starts[i + 1]; ++q) {
      const float* row = pairs.absolute_rows + pairs.order[q] * 2;
      total[kSplatGradValues] += row[0];
      total[kSplatGradValues + 1] += row[1];
    }
  }
#pragma unroll
  for (int k = 0; k < kSplatGradValues; ++k) *sums.at(k, i) = total[k];
  if (mean2d_abs) mean2d_abs[i] = {total[kSplatGradValues], total[kSplatGradValues + 1]};
}

// The ordered backward's feature gradients: thread i C + c sums channel c of Gaussian i over
// its pairs in list order (as gather_pair_sums_kernel), into features_grad.
__global__ void gather_feature_grads_kernel(int count, int channels, PairSums pairs,
                                            float* features_grad) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= int64_t(count) * channels) return;
  const int i = int(t / channels), c = int(t % channels);
  const int feature_row = 6 + pairs.feature_chunk;
  const int chunk = c / pairs.feature_chunk, k = 6 + c % pairs.feature_chunk;
  float total = 0.f;
  for (int64_t q = pairs.starts[i]; q < pairs.starts[i + 1]; ++q)
    total += pairs.feature_rows[(pairs.order[q] * pairs.feature_chunks + chunk) * feature_row + k];
  features_grad[t] = total;
}

// The ordered contribution statistics' second pass: Gaussian i's weight sum and
// opacity-transmittance sum, its pairs' rows (pairs x 2) added in list order.
__global__ void gather_contributions_kernel(int count, PairSums pairs, float* contribution) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= count) return;
  float weight = 0.f, opacity_transmittance = 0.f;
  for (int64_t q = pairs.starts[i]; q < pairs.starts[i + 1]; ++q) {
    const float* row = pairs.rows + pairs.order[q] * 2;
    weight += row[0];
    opacity_transmittance += row[1];
  }
  contribution[int64_t(i) * kContributionValues] = weight;
  contribution[int64_t(i) * kContributionValues + 4] = opacity_transmittance;
}

// Each pair's Gaussian (the sums' index), for the sort that groups the pairs by Gaussian.
__global__ void pair_gaussians_kernel(TileLists lists, int64_t count, int* gaussians) {
  const int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p < count) gaussians[p] = lists.gaussian(lists.point_list[p]);
}

// The chunk's upstream gradient of the feature map at the thread's pixel (0 past the channels).
template <int kChunk>
__device__ void load_feature_upstream(const FeatureThread<kChunk>& me,
                                      const OptionalGrads<float>& extra, float* upstream) {
#pragma unroll
  for (int c = 0; c < kChunk; ++c)
    upstream[c] = me.inside && c < me.count
                      ? extra.feature_map[(me.first + c) * me.plane + me.p] : 0.f;
}

// Slot of a part's value in extra.feature_dots: a tile's last part at `tile`, the part that
// ends at split e at tiles + e (the chunk's row of kTilePixels within it).
__device__ __forceinline__ int64_t feature_dot_index(const Camera<float>& cam, int tile,
                                                     int resume_part) {
  const int slot = resume_part < 0 ? tile : cam.tiles_x * cam.tiles_y + resume_part;
  return (int64_t(slot) * gridDim.y + blockIdx.y) * kTilePixels + threadIdx.x;
}

// The split backward of the feature map, first kernel (lists split by the forward: TileSplits):
// each part's sum of w_i (F_i . g) over the chunk's channels, walked front to back from T saved
// at its split, into extra.feature_dots: what FeatureBackward::behind is behind the parts in
// front of it.
template <int kChunk>
__global__ void __launch_bounds__(kTilePixels)
    feature_dots_kernel(Camera<float> cam, GaussianState<float> state, TileLists lists,
                        PixelBuffers<float> px, OptionalGrads<float> extra, TileSplits splits,
                        bool warp_skip) {
  DGRD_SHARED(FeatureBatch<kChunk>, batch);
  splits.load_length();
  const ListPart part(cam, lists, splits);
  if (!part.valid || part.parts == 1) return;  // the whole block
  const FeatureThread<kChunk> me(cam, part, px, extra.channels);
  float upstream[kChunk];
  load_feature_upstream(me, extra, upstream);
  float dots = 0.f;
  walk_feature_part(me, part, part_start_transmittance(me, part, splits), batch, state, lists,
                    extra.features, extra.channels, warp_skip,
                    [&](int j, float alpha, float transmittance) {
                      dots += alpha * transmittance *
                              FeatureBackward<float>::dot(batch.feature[j], upstream, kChunk);
                    });
  extra.feature_dots[feature_dot_index(cam, part.tile, part.resume_part)] = dots;
}

// The feature map's part of the backward, kChunk channels per block as in the forward: each
// chunk adds its part of dL/dalpha (FeatureBackward), carried to mean2d, conic and opacity,
// and the chunk's dL/dF = w g. A block walks its part of the list (ListPart) back to front,
// from T at the part's end (saved at its split, or the pixel's final T) and, behind it, the
// sums of the parts after it (feature_dots_kernel). Bounded at the render backward's 4 blocks
// per SM: without a bound each ptxas picked its own registers, 2 to 4 blocks (doc/performance.md).
template <int kChunk, bool kOrdered>
__global__ void __launch_bounds__(kTilePixels, kRenderBackwardBlocks)
    render_features_backward_kernel(Camera<float> cam, GaussianState<float> state,
                                    TileLists lists, PixelBuffers<float> px,
                                    OptionalGrads<float> extra, SplatSums sums,
                                    TileSplits splits, bool warp_skip, bool scatter,
                                    PairSums pairs) {
  DGRD_SHARED(FeatureBatch<kChunk>, batch);
  using Ordered = OrderedWarpSums<kOrdered, 6 + kChunk, 8>;
  DGRD_SHARED(Ordered, ordered);
  if constexpr (kOrdered) ordered.clear();  // the walk's first barrier comes before any write
  splits.load_length();
  const ListPart part(cam, lists, splits);
  if (!part.valid) return;  // the whole block
  const FeatureThread<kChunk> me(cam, part, px, extra.channels);
  float upstream[kChunk];
  load_feature_upstream(me, extra, upstream);
  float transmittance =
      !me.inside ? 1.f
      : me.last > part.hi
          ? splits.value(splits.slot_of(part.begin + part.hi), 0, threadIdx.x)
          : px.pixel_state[PixelBuffers<float>::kFinalT * me.plane + me.p];
  FeatureBackward<float> fb;
  fb.reset();
  for (int q = part.part + 1; me.last > part.hi && q < part.parts; ++q) {
    const int e = q + 1 < part.parts ? splits.slot_after(part.begin, q) : -1;
    fb.behind += extra.feature_dots[feature_dot_index(cam, part.tile, e)];
  }

  const int warp_end = warp_skip ? me.warp_end : me.block_end;
  // The lane's total in the scatter (the six splat values, then the chunk's channels) and
  // where it goes, taken once: a channel's gradient row by row of features_grad, as the sums.
  const int slot = scatter ? scatter_slot<6 + kChunk>(6 + me.count) : -1;
  const SumLane lane =
      slot < 6 ? sum_lane(sums, slot)
               : SumLane{extra.features_grad + me.first + (slot - 6),
                         uint32_t(sizeof(float) * extra.channels)};
  const int ordered_slot = kOrdered ? scatter_slot<6 + kChunk>(6 + kChunk) : -1;
  for (int stop = me.block_end; stop > part.lo; stop -= kTilePixels) {
    const int start = max(part.lo, stop - kTilePixels);
    __syncthreads();  // the previous batch is no longer read
    const int k = stop - 1 - int(threadIdx.x);
    if (k >= start) {
      const int row = lists.point_list[part.begin + k];
      batch.load(threadIdx.x, row, lists.gaussian(row), state, extra.features, me,
                 extra.channels, me.first, me.count, warp_skip);
    }
    __syncthreads();
    const int n = stop - start;
    // Splat j of the batch, its row `ordered_row` of the ordered chunk.
    const auto step = [&](int j, int ordered_row) {
      const int pos = stop - 1 - j;
      SplatGrad<float> g = {};
      float w = 0.f;
      bool contributes = false;
      if (pos < me.last) {
        float alpha, G;
        Vec2<float> d;
        if (splat_alpha(batch.mean_id[j].mean2d, batch.exponent[j], me.at.x, me.at.y, alpha,
                        G, d)) {
          const float factor = unblend_factor(alpha);
          transmittance = transmittance * factor;
          const float dalpha =
              fb.step(alpha, factor, transmittance, batch.feature[j], upstream, kChunk);
          alpha_grad_to_splat(dalpha, G, d, batch.exponent[j], g);
          w = alpha * transmittance;
          contributes = true;
        }
      }
      if (!__any_sync(kFullWarp, contributes)) return;
      // dL/dF = w g, 0 where the pixel does not blend the splat: w = 0 there, but 0 x g is
      // NaN at a pixel whose upstream gradient is, which would reach every splat its warp visits.
      const auto dfeature = [&](int c) { return zero_unless(contributes, w * upstream[c]); };
      const int id = batch.mean_id[j].id;
      if (kOrdered || scatter) {
        // The six splat values (mean2d, conic, opacity), then the chunk's feature gradients
        // (0 past its channels); ordered, the warp's totals into its row of the chunk.
        float v[6 + kChunk] = {g.mean2d.x, g.mean2d.y, g.conic.a, g.conic.b, g.conic.c,
                               g.opacity};
#pragma unroll
        for (int c = 0; c < kChunk; ++c) v[6 + c] = dfeature(c);
        const float total = warp_scatter_total(v);
        if constexpr (kOrdered) {
          if (ordered_slot >= 0) ordered.value[me.warp][ordered_row][ordered_slot] = total;
        } else if (lane.holds()) {
          atomicAdd(lane.at(id), total);
        }
        return;
      }
      // One value at a time, each made where it is added (an array of all of them would hold
      // kChunk more registers: 80 instead of 64 at kChunk = 16, sm_90).
      warp_add(g.mean2d.x, sums.at(0, id));
      warp_add(g.mean2d.y, sums.at(1, id));
      warp_add(g.conic.a, sums.at(2, id));
      warp_add(g.conic.b, sums.at(3, id));
      warp_add(g.conic.c, sums.at(4, id));
      warp_add(g.opacity, sums.at(5, id));
      float* features_grad = extra.features_grad + uint64_t(id) * extra.channels + me.first;
#pragma unroll
      for (int c = 0; c < kChunk; ++c)
        if (c < me.count) warp_add(dfeature(c), features_grad + c);
    };
    // Ballots: every lane walks, with the warp's own n (the visit holds warp-wide sums).
    const auto walk = [&](int first, int end, auto each) {
      visit_reaching(batch.reach, first, end, end, me.warp, [&](int j) {
        each(j);
        return true;
      });
    };
    const int from = max(0, stop - warp_end);
    if constexpr (!kOrdered) {
      walk(from, n, [&](int j) { step(j, 0); });
    } else {
      visit_in_chunks<8>(from, n, ordered, walk, step, [&](int j) {
        return pairs.feature_rows +
               (int64_t(part.begin + stop - 1 - j) * gridDim.y + blockIdx.y) * (6 + kChunk);
      });
    }
  }
}

// AbsGS's statistic where feature channels are rendered too: each pixel's |d/d mean2d| of its
// whole dL/dalpha, the colour's, depth's and weight's (PixelBackward) with every channel's
// (FeatureBackward), which no other kernel holds in one place (the render backward walks the
// maps alone, each feature block one chunk of channels) and |.| does not add up by parts. One
// block per tile walks the whole list back to front from each pixel's final state, as the CPU
// does; the first kChunk of the pixel's upstream channels are held in registers, any others
// and the splats' channels read where they lie (the lanes of a warp read one splat's row: a
// broadcast). Launched only when both are asked for (PGSR's and RaDe-GS's calls).
// No bound on blocks per SM: at the render backward's four (64 registers), and at three (80),
// CUDA 13.5's ptxas spilled into its per-splat loop for sm_120.
template <int kChunk, bool kOrdered>
__global__ void __launch_bounds__(kTilePixels)
    render_absolute_grad_kernel(Camera<float> cam, GaussianState<float> state, TileLists lists,
                                PixelBuffers<float> px, PixelGrads<float> grads,
                                OptionalGrads<float> extra, PairSums pairs) {
  DGRD_SHARED(SplatBatch, batch);
  using Ordered = OrderedWarpSums<kOrdered, 2, 16>;
  DGRD_SHARED(Ordered, ordered);
  if constexpr (kOrdered) ordered.clear();  // walk_back's first barrier comes before any write
  const TileThread me(cam);
  const int begin = lists.tile_ranges[2 * me.tile];
  const int64_t plane = int64_t(cam.width) * cam.height;
  const int p = me.y * cam.width + me.x;
  const int last = me.inside ? px.n_contrib[p] : 0;
  const int channels = extra.channels;
  PixelBackward<float> pb = {};
  if (last > 0) pb.init(px, grads, p, plane, cam.background);
  FeatureBackward<float> fb;
  fb.reset();
  float upstream[kChunk];
#pragma unroll
  for (int c = 0; c < kChunk; ++c)
    upstream[c] = last > 0 && c < channels ? extra.feature_map[c * plane + p] : 0.f;
  const int warp_end = warp_max(last);
  batch.walk_back<true>(begin, 0, block_max(last), lists, state, me, [&](int stop, int n) {
    // Splat j of the batch, its row `ordered_row` of the ordered chunk.
    const auto step = [&](int j, int ordered_row) {
      float alpha, G;
      Vec2<float> d;
      const bool blends = splat_alpha(batch.mean_id[j].mean2d, batch.exponent[j], me.at.x,
                                      me.at.y, alpha, G, d) & (stop - 1 - j < last);
      if (!__any_sync(kFullWarp, blends)) return;
      const unsigned id = batch.mean_id[j].id;
      SplatGrad<float> g = {};
      if (blends) {
        const float factor = unblend_factor(alpha);
        const float maps_dalpha = pb.unblend(alpha, factor, batch.feature[j], g);
        const float* values = extra.features + uint64_t(id) * channels;
        float feature_dot = 0.f;
#pragma unroll
        for (int c = 0; c < kChunk; ++c)
          if (c < channels) feature_dot += values[c] * upstream[c];
        for (int c = kChunk; c < channels; ++c)
          feature_dot += values[c] * extra.feature_map[c * plane + p];
        const float dalpha = maps_dalpha + fb.step(alpha, factor, pb.transmittance, feature_dot);
        alpha_grad_to_splat(dalpha, G, d, batch.exponent[j], g);
      }
      const Vec2<float> a = abs_each(g.mean2d);  // 0 where the pixel does not blend the splat
      if constexpr (kOrdered) {
        const float v[2] = {a.x, a.y};
        const int slot = scatter_slot<2>(2);
        const float total = warp_scatter_total(v);
        if (slot >= 0) ordered.value[me.warp][ordered_row][slot] = total;
        return;
      }
      warp_add(a.x, &extra.mean2d_abs[id].x);
      warp_add(a.y, &extra.mean2d_abs[id].y);
    };
    const auto walk = [&](int first, int end, auto each) {
      batch.for_each_reaching<true>(first, end, me.warp, each);
    };
    const int from = max(0, stop - warp_end);
    if constexpr (!kOrdered) {
      walk(from, n, [&](int j) { step(j, 0); });
    } else {
      visit_in_chunks<16>(from, n, ordered, walk, step, [&](int j) {
        return pairs.absolute_rows + int64_t(begin + stop - 1 - j) * 2;
      });
    }
  });
}

// Every value of the gradients `out` is written (the glue allocates them uninitialized).
__global__ void preprocess_backward_kernel(Camera<float> cam, GaussianInputs<float> in,
                                           const int* radii, SplatSums sums,
                                           GaussianGrads<float> out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= in.count) return;
  const bool culled = radii[i] == 0;
  if (!culled) preprocess_gaussian_backward(cam, in, i, read_splat_sums(sums, i), out);
  zero_unwritten_grads(cam, in, i, culled, out);
}

// The k-th of a CameraGrad's values; with k known at compile time (unrolled loops) the struct
// stays in registers.
__device__ __forceinline__ float camera_value(const CameraGrad<float>& g, int k) {
  return k < 16   ? g.viewmatrix[k]
         : k < 32 ? g.projmatrix[k - 16]
         : k < 35 ? g.campos[k - 32]
         : k < 37 ? g.tanfov[k - 35]
                  : g.distortion[k - 37];
}

// As preprocess_backward_kernel, and the block's sum of the Gaussians' camera gradient shares
// into partials[blockIdx.x]: shuffles within each warp, then one thread per value over the
// warps, in a fixed order. Launched with kThreads threads per block.
__global__ void __launch_bounds__(kThreads)
    preprocess_backward_camera_kernel(Camera<float> cam, GaussianInputs<float> in,
                                      const int* radii, SplatSums sums,
                                      GaussianGrads<float> out, CameraGrad<float>* partials) {
  constexpr int kWarps = kThreads / 32;
  using WarpSums = float[kWarps][kCameraGradValues];
  DGRD_SHARED(WarpSums, warp_sums);
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  CameraGrad<float> share = {};
  if (i < in.count) {
    const bool culled = radii[i] == 0;
    if (!culled) preprocess_gaussian_backward(cam, in, i, read_splat_sums(sums, i), out, &share);
    zero_unwritten_grads(cam, in, i, culled, out);
  }
  const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) / 32;
#pragma unroll
  for (int k = 0; k < kCameraGradValues; ++k) {
    const float sum = warp_sum(camera_value(share, k));
    if (lane == 0) warp_sums[warp][k] = sum;
  }
  __syncthreads();
  if (threadIdx.x < kCameraGradValues) {
    float total = 0.0f;
    for (int w = 0; w < kWarps; ++w) total += warp_sums[w][threadIdx.x];
    reinterpret_cast<float*>(partials + blockIdx.x)[threadIdx.x] = total;
  }
}

// The second pass: one block per camera value sums the blocks' partials in a fixed order, in
// double, so the camera gradient is the same on every call. Launched with kThreads threads.
__global__ void __launch_bounds__(kThreads)
    camera_grad_total_kernel(const CameraGrad<float>* partials, int blocks,
                             CameraGrad<float>* total) {
  DGRD_SHARED_ARRAY(double, sums, kThreads);
  const int k = blockIdx.x;
  const float* values = reinterpret_cast<const float*>(partials);
  double sum = 0.0;
  for (int b = threadIdx.x; b < blocks; b += blockDim.x)
    sum += values[int64_t(b) * kCameraGradValues + k];
  sums[threadIdx.x] = sum;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (int(threadIdx.x) < half) sums[threadIdx.x] += sums[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) reinterpret_cast<float*>(total)[k] = float(sums[0]);
}

__global__ void mark_visible_kernel(const float* viewmatrix, const float* positions, int count,
                                    bool* visible) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < count) visible[i] = in_front_of_camera(viewmatrix, load3(positions, i));
}

}  // namespace

void preprocess(const Camera<float>& cam, const GaussianInputs<float>& in,
                const GaussianState<float>& state, DepthKeys depth, int* radii_out,
                cudaStream_t stream) {
  if (in.count == 0) return;
  DGRD_LAUNCH(preprocess_kernel, blocks_for(in.count), kThreads, stream)(cam, in, state, depth,
                                                                       radii_out);
}

cudaError_t inclusive_scan(void* temp, size_t& temp_bytes, const int64_t* tiles_touched,
                           int64_t* offsets, int count, cudaStream_t stream) {
  return cub::DeviceScan::InclusiveSum(temp, temp_bytes, tiles_touched, offsets, count, stream);
}

void duplicate_keys(const Camera<float>& cam, int count, const GaussianState<float>& state,
                    const int64_t* offsets, uint64_t* keys, int* ids, cudaStream_t stream) {
  if (count == 0) return;
  DGRD_LAUNCH(duplicate_keys_kernel, blocks_for(count), kThreads, stream)(cam, count, state,
                                                                        offsets, keys, ids);
}

int sort_end_bit(int tiles) {
  int bits = 0;
  while (bits < 31 && (1 << bits) < tiles) ++bits;
  return 32 + bits;
}

// CUB's radix sort in its DoubleBuffer form, which overwrites both buffers instead of taking
// scratch for a copy of the data; the buffers that hold the result noted once it has run (the
// call that only sizes the scratch moves nothing).
template <typename Key>
cudaError_t radix_sort(void* temp, size_t& temp_bytes, SortBuffers<Key>& keys,
                       SortBuffers<int>& values, int count, int end_bit, cudaStream_t stream) {
  cub::DoubleBuffer<Key> k(keys.sorted(), keys.buffers[keys.current ^ 1]);
  cub::DoubleBuffer<int> v(values.sorted(), values.buffers[values.current ^ 1]);
  const cudaError_t status =
      cub::DeviceRadixSort::SortPairs(temp, temp_bytes, k, v, count, 0, end_bit, stream);
  if (temp != nullptr) {
    keys.current ^= k.selector;
    values.current ^= v.selector;
  }
  return status;
}

cudaError_t sort_pairs(void* temp, size_t& temp_bytes, SortBuffers<uint64_t>& keys,
                       SortBuffers<int>& ids, int pairs, int end_bit, cudaStream_t stream) {
  return radix_sort(temp, temp_bytes, keys, ids, pairs, end_bit, stream);
}

void identify_tile_ranges(const uint64_t* sorted_keys, int pairs, int* tile_ranges,
                          cudaStream_t stream) {
  if (pairs == 0) return;
  DGRD_LAUNCH(tile_ranges_kernel<uint64_t>, blocks_for(pairs), kThreads, stream)(
      sorted_keys, pairs, tile_ranges);
}

cudaError_t sort_depths(void* temp, size_t& temp_bytes, SortBuffers<uint32_t>& keys,
                        SortBuffers<int>& order, int count, cudaStream_t stream) {
  // Depth keys have 31 bits (depth_sort_key).
  return radix_sort(temp, temp_bytes, keys, order, count, 31, stream);
}

cudaError_t inclusive_scan_by_depth(void* temp, size_t& temp_bytes, const int64_t* tiles_touched,
                                    const int* order, int64_t* offsets, int count,
                                    cudaStream_t stream) {
  return cub::DeviceScan::InclusiveSum(temp, temp_bytes,
                                       thrust::make_permutation_iterator(tiles_touched, order),
                                       offsets, count, stream);
}

void duplicate_tile_keys(const Camera<float>& cam, int count, const GaussianState<float>& state,
                         const int* order, const int64_t* offsets, uint32_t* keys, int* ids,
                         bool by_rank, cudaStream_t stream) {
  if (count == 0) return;
  DGRD_LAUNCH(duplicate_tile_keys_kernel, blocks_for(count), kThreads, stream)(
      cam, count, state, order, offsets, keys, ids, by_rank);
}

void compact_state(const Camera<float>& cam, const GaussianInputs<float>& in, const int* order,
                   int rows, const GaussianState<float>& compact, int* gaussians,
                   cudaStream_t stream) {
  if (rows == 0) return;
  DGRD_LAUNCH(compact_state_kernel, blocks_for(rows), kThreads, stream)(cam, in, order, rows,
                                                                         compact, gaussians);
}

cudaError_t sort_tile_keys(void* temp, size_t& temp_bytes, SortBuffers<uint32_t>& keys,
                           SortBuffers<int>& ids, int pairs, int tiles, cudaStream_t stream) {
  // Stable: pairs of one tile keep their depth order.
  return radix_sort(temp, temp_bytes, keys, ids, pairs, max(1, sort_end_bit(tiles) - 32), stream);
}

void identify_tile_ranges(const uint32_t* sorted_keys, int pairs, int* tile_ranges,
                          cudaStream_t stream) {
  if (pairs == 0) return;
  DGRD_LAUNCH(tile_ranges_kernel<uint32_t>, blocks_for(pairs), kThreads, stream)(
      sorted_keys, pairs, tile_ranges);
}

// Channels per block of the feature kernels: small counts get small chunks (fewer registers
// and less shared memory), larger ones 16 per block, blocks over chunks running in parallel.
int feature_chunk(int channels) { return channels <= 4 ? 4 : channels <= 8 ? 8 : 16; }

CudaTuning& cuda_tuning() {
  static CudaTuning tuning;
  return tuning;
}

bool split_forward(int tiles, int multiprocessors) {
  const CudaTuning& tuning = cuda_tuning();
  if (!tuning.split_tiles || tuning.split_forward == 0) return false;
  return tuning.split_forward > 0 ||
         int64_t(tiles) <= int64_t(kSplitForwardTilesPerSm) * std::max(multiprocessors, 1);
}

namespace {
bool halves_forward_parts() {
  const CudaTuning& tuning = cuda_tuning();
  // Whatever the image (split_forward decides per call): L then is the same for every image.
  return tuning.split_tiles && tuning.split_forward != 0 && tuning.short_forward_parts;
}
}  // namespace

int forward_split_length(int length) {
  return halves_forward_parts() && length % (2 * kTilePixels) == 0 ? length / 2 : length;
}

void plan_splits(const TileSplits& splits, int tiles, const int* tile_ranges,
                 cudaStream_t stream) {
  if (splits.capacity > 0)
    DGRD_LAUNCH(plan_splits_kernel, blocks_for(tiles), kThreads, stream)(tiles, tile_ranges,
                                                                        splits);
}

int split_length(int64_t pairs, int multiprocessors) {
  const CudaTuning& tuning = cuda_tuning();
  if (!tuning.split_tiles || pairs == 0) return 0;
  if (tuning.split_length > 0) return tuning.split_length;
  // Parts of at most half the even share of the pairs over the backward blocks that run at
  // once: then no part is much longer than the kernel's average block, at most two parts per
  // such block (pairs / L <= 2 x blocks) to save state for. In whole pairs of batches where
  // the forward halves them (forward_split_length).
  const int64_t blocks = int64_t(std::max(multiprocessors, 1)) * kRenderBackwardBlocks;
  const int64_t share = (pairs + 2 * blocks - 1) / (2 * blocks);
  const int64_t unit = halves_forward_parts() ? 2 * kTilePixels : kTilePixels;
  const int64_t length = (share + unit - 1) / unit * unit;
  // At most 2^24: a position within a part is exact in a float (PartComposite::last).
  return int(std::min<int64_t>(std::max<int64_t>(length, kTilePixels), kMaxSplitLength));
}

namespace {

// Calls run() with each runtime flag as a compile-time constant (std::true_type or
// std::false_type), in order, so that each combination is its own kernel.
template <typename Run>
void dispatch_flags(Run&& run) {
  run();
}
template <typename Run, typename... Flags>
void dispatch_flags(Run&& run, bool flag, Flags... flags) {
  if (flag)
    dispatch_flags([&](auto... constants) { run(std::true_type{}, constants...); }, flags...);
  else
    dispatch_flags([&](auto... constants) { run(std::false_type{}, constants...); }, flags...);
}

// The feature map: split lists in parts where the glue gave extra.feature_parts (one block per
// tile and per part ending at a split, then the parts' sums added per tile), else whole lists.
template <int kChunk>
void launch_features(const Camera<float>& cam, const GaussianState<float>& state, TileLists lists,
                     const PixelBuffers<float>& px, const OptionalOutputs<float>& extra,
                     const TileSplits& splits, const CudaTuning& tuning, cudaStream_t stream) {
  const TileSplits parts = extra.feature_parts ? splits : TileSplits{};
  const int tiles = cam.tiles_x * cam.tiles_y, chunks = (extra.channels + kChunk - 1) / kChunk;
  DGRD_LAUNCH(render_features_kernel<kChunk>, dim3(tiles + parts.capacity, chunks), kTilePixels,
              stream)(cam, state, lists, px, extra, parts, tuning.warp_skip);
  if (parts.capacity > 0)
    DGRD_LAUNCH(combine_feature_parts_kernel<kChunk>, dim3(tiles, chunks), kTilePixels, stream)(
        cam, lists, extra, parts);
}

// Likewise the backward, in parts where the glue gave extra.feature_dots.
template <int kChunk>
void launch_features_backward(const Camera<float>& cam, const GaussianState<float>& state,
                              TileLists lists, const PixelBuffers<float>& px,
                              const OptionalGrads<float>& extra, const SplatSums& sums,
                              const TileSplits& splits, const PairSums& pairs,
                              const CudaTuning& tuning, cudaStream_t stream) {
  const TileSplits parts = extra.feature_dots ? splits : TileSplits{};
  const dim3 grid(cam.tiles_x * cam.tiles_y + parts.capacity,
                  (extra.channels + kChunk - 1) / kChunk);
  if (parts.capacity > 0)
    DGRD_LAUNCH(feature_dots_kernel<kChunk>, grid, kTilePixels, stream)(
        cam, state, lists, px, extra, parts, tuning.warp_skip);
  const auto render_features_backward_variant =
      pairs.ordered() ? render_features_backward_kernel<kChunk, true>
                      : render_features_backward_kernel<kChunk, false>;
  DGRD_LAUNCH(render_features_backward_variant, grid, kTilePixels, stream)(
      cam, state, lists, px, extra, sums, parts, tuning.warp_skip, tuning.scatter_reduce, pairs);
}

}  // namespace

void render(const Camera<float>& cam, const GaussianState<float>& state, TileLists lists,
            const PixelBuffers<float>& px, const OptionalOutputs<float>& extra,
            const TileSplits& splits, const TileSplits& forward_splits, cudaStream_t stream) {
  const int tiles = cam.tiles_x * cam.tiles_y;
  const CudaTuning tuning = cuda_tuning();
  const bool in_parts = forward_splits.composite != nullptr;  // the glue's split_forward()
  const TileSplits& walked = in_parts ? forward_splits : splits;
  const int blocks = tiles + (in_parts ? walked.capacity : 0);
  dispatch_flags(
      [&](auto median, auto warp_skip, auto split_parts) {
        const auto render_variant =
            render_kernel<decltype(median)::value, decltype(warp_skip)::value,
                          decltype(split_parts)::value>;
        DGRD_LAUNCH(render_variant, blocks, kTilePixels, stream)(cam, state, lists, px, extra,
                                                                 walked);
      },
      extra.has_median(), tuning.warp_skip, in_parts);
  if (in_parts) {
    dispatch_flags(
        [&](auto median, auto warp_skip) {
          const auto resolve_variant =
              render_resolve_kernel<decltype(median)::value, decltype(warp_skip)::value>;
          DGRD_LAUNCH(resolve_variant, tiles + walked.capacity, kTilePixels, stream)(
              cam, state, lists, px, extra, walked);
        },
        extra.has_median(), tuning.warp_skip);
  }
  if (!extra.has_features()) return;
  switch (feature_chunk(extra.channels)) {
    case 4: launch_features<4>(cam, state, lists, px, extra, splits, tuning, stream); break;
    case 8: launch_features<8>(cam, state, lists, px, extra, splits, tuning, stream); break;
    default: launch_features<16>(cam, state, lists, px, extra, splits, tuning, stream); break;
  }
}

void render_backward(const Camera<float>& cam, const GaussianState<float>& state, TileLists lists,
                     const PixelBuffers<float>& px, PixelGrads<float> grads,
                     const OptionalGrads<float>& extra, const SplatSums& sums,
                     const TileSplits& splits_in, const PairSums& pairs,
                     cudaStream_t stream) {
  const int tiles = cam.tiles_x * cam.tiles_y;
  const int blocks = tiles + splits_in.capacity;  // a block per tile, and per part it may add
  const CudaTuning tuning = cuda_tuning();
  TileSplits splits = splits_in;
  splits.parts_first = tuning.parts_first;
  // With feature channels, AbsGS's statistic is render_absolute_grad_kernel's alone.
  OptionalGrads<float> maps_extra = extra;
  if (extra.has_features()) maps_extra.mean2d_abs = nullptr;
  if (pairs.ordered()) {  // the warps' totals by scatter: only 4 more variants
    dispatch_flags(
        [&](auto median, auto warp_skip) {
          const auto ordered_variant =
              render_backward_kernel<decltype(median)::value, decltype(warp_skip)::value, true,
                                     true>;
          DGRD_LAUNCH(ordered_variant, blocks, kTilePixels, stream)(
              cam, state, lists, px, grads, maps_extra, sums, splits, pairs);
        },
        extra.has_median(), tuning.warp_skip);
  } else {
    dispatch_flags(
        [&](auto median, auto warp_skip, auto scatter) {
          const auto render_backward_variant =
              render_backward_kernel<decltype(median)::value, decltype(warp_skip)::value,
                                     decltype(scatter)::value, false>;
          DGRD_LAUNCH(render_backward_variant, blocks, kTilePixels, stream)(
              cam, state, lists, px, grads, maps_extra, sums, splits, pairs);
        },
        extra.has_median(), tuning.warp_skip, tuning.scatter_reduce);
  }
  if (!extra.has_features()) return;
  switch (feature_chunk(extra.channels)) {
    case 4:
      launch_features_backward<4>(cam, state, lists, px, extra, sums, splits, pairs, tuning,
                                  stream);
      break;
    case 8:
      launch_features_backward<8>(cam, state, lists, px, extra, sums, splits, pairs, tuning,
                                  stream);
      break;
    default:
      launch_features_backward<16>(cam, state, lists, px, extra, sums, splits, pairs, tuning,
                                   stream);
      break;
  }
  if (!extra.mean2d_abs || tiles == 0) return;
  const auto launch_absolute = [&](auto absolute_variant) {
    DGRD_LAUNCH(absolute_variant, tiles, kTilePixels, stream)(cam, state, lists, px, grads,
                                                              extra, pairs);
  };
  // At most 8 channels in registers: 16 took 103 registers on sm_90 (2 blocks per SM).
  if (extra.channels <= 4)
    launch_absolute(pairs.ordered() ? render_absolute_grad_kernel<4, true>
                                    : render_absolute_grad_kernel<4, false>);
  else
    launch_absolute(pairs.ordered() ? render_absolute_grad_kernel<8, true>
                                    : render_absolute_grad_kernel<8, false>);
}

void pair_gaussians(TileLists lists, int64_t count, int* gaussians, cudaStream_t stream) {
  if (count == 0) return;
  DGRD_LAUNCH(pair_gaussians_kernel, blocks_for(count), kThreads, stream)(lists, count,
                                                                          gaussians);
}

void gather_pair_sums(int count, const PairSums& pairs, const SplatSums& sums,
                      const OptionalGrads<float>& extra, cudaStream_t stream) {
  if (count == 0) return;
  DGRD_LAUNCH(gather_pair_sums_kernel, blocks_for(count), kThreads, stream)(
      count, pairs, sums, extra.mean2d_abs);
  if (pairs.feature_rows && extra.channels > 0)
    DGRD_LAUNCH(gather_feature_grads_kernel, blocks_for(int64_t(count) * extra.channels),
                kThreads, stream)(count, extra.channels, pairs, extra.features_grad);
}

void clear_splat_sums(const SplatSums& sums, int count, cudaStream_t stream) {
  if (count == 0) return;
  DGRD_LAUNCH(clear_splat_sums_kernel, blocks_for(count), kThreads, stream)(sums, count);
}

void count_touches(const Camera<float>& cam, const GaussianState<float>& state, TileLists lists,
                   int* touch_count, cudaStream_t stream) {
  const int tiles = cam.tiles_x * cam.tiles_y;
  if (tiles == 0) return;
  DGRD_LAUNCH(touch_count_kernel, tiles, kTilePixels, stream)(cam, state, lists, touch_count);
}

void gaussian_contributions(const Camera<float>& cam, const GaussianState<float>& state,
                            TileLists lists, float* contribution, int* dominant_map,
                            const PairSums& pairs, int count, cudaStream_t stream) {
  const int tiles = cam.tiles_x * cam.tiles_y;
  if (tiles == 0) return;
  const auto contribution_variant =
      pairs.ordered() ? contribution_kernel<true> : contribution_kernel<false>;
  DGRD_LAUNCH(contribution_variant, tiles, kTilePixels, stream)(
      cam, state, lists, contribution, dominant_map, pairs.rows);
  if (pairs.ordered() && count > 0)
    DGRD_LAUNCH(gather_contributions_kernel, blocks_for(count), kThreads, stream)(
        count, pairs, contribution);
}

void project_points(const Camera<float>& cam, const float* points, int count,
                    PointOnScreen<float>* rows, int* keys, float* opacity, cudaStream_t stream) {
  if (count == 0) return;
  DGRD_LAUNCH(project_points_kernel, blocks_for(count), kThreads, stream)(cam, points, count,
                                                                        rows, keys, opacity);
}

void ray_quadrics(const Camera<float>& cam, const GaussianInputs<float>& in,
                  RayQuadric<float>* quadrics, cudaStream_t stream) {
  if (in.count == 0) return;
  DGRD_LAUNCH(ray_quadrics_kernel, blocks_for(in.count), kThreads, stream)(cam, in, quadrics);
}

void point_opacity(const Camera<float>& cam, const GaussianState<float>& state, TileLists lists,
                   const RayQuadric<float>* quadrics, const PointOnScreen<float>* points,
                   const int* order, const int* point_ranges, float* opacity,
                   cudaStream_t stream) {
  const int tiles = cam.tiles_x * cam.tiles_y;
  if (tiles == 0) return;
  DGRD_LAUNCH(point_opacity_kernel, tiles, kTilePixels, stream)(state, lists, quadrics, points,
                                                               order, point_ranges, opacity);
}

int camera_grad_partials(int count) { return blocks_for(count); }

void preprocess_backward(const Camera<float>& cam, const GaussianInputs<float>& in,
                         const int* radii, const SplatSums& sums,
                         const GaussianGrads<float>& out, CameraGrad<float>* camera,
                         CameraGrad<float>* partials, cudaStream_t stream) {
  if (in.count == 0) return;
  const int blocks = blocks_for(in.count);
  if (!camera) {
    DGRD_LAUNCH(preprocess_backward_kernel, blocks, kThreads, stream)(cam, in, radii, sums, out);
    return;
  }
  DGRD_LAUNCH(preprocess_backward_camera_kernel, blocks, kThreads, stream)(
      cam, in, radii, sums, out, partials);
  DGRD_LAUNCH(camera_grad_total_kernel, kCameraGradValues, kThreads, stream)(partials, blocks,
                                                                             camera);
}

void mark_visible(const float* viewmatrix, const float* positions, int count, bool* visible,
                  cudaStream_t stream) {
  if (count == 0) return;
  DGRD_LAUNCH(mark_visible_kernel, blocks_for(count), kThreads, stream)(viewmatrix, positions,
                                                                      count, visible);
}

}  // namespace gpu
}  // namespace dgrd
