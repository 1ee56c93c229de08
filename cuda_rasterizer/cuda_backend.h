// The CUDA backend's stages, as host functions launching kernels on a stream (float32 only).
// Memory is the caller's: the glue allocates every buffer through PyTorch's caching allocator.
#pragma once

#ifdef DGRD_EMULATE_CUDA
#include "cuda_emulation.h"
#else
#include <cuda_runtime.h>
#endif

#include <cstddef>
#include <cstdint>

#include "types.h"

namespace dgrd {
namespace gpu {

// Depth-first binning's input, written by the preprocess (CudaTuning::depth_first_sort): each
// Gaussian's depth key (depth_sort_key) and its index, for sort_depths. Null for the 64-bit sort.
// A Gaussian without tiles gets the largest key (kUnbinnedDepthKey), so that the sort puts
// those last and the first `binned` of the order are the Gaussians with tiles; `binned`, when
// not null (the compact state), counts them (the caller zeroes it).
struct DepthKeys {
  uint32_t* keys = nullptr;
  int* order = nullptr;
  int64_t* binned = nullptr;
};
// Above every key of a Gaussian with tiles (a finite depth above the near plane; by inverse depth
// 1/z > 0), within the sort's 31 bits.
constexpr uint32_t kUnbinnedDepthKey = 0x7fffffffu;

// One thread per Gaussian: fills the state, including tiles_touched (its rows only where `state`
// has them: without, compact_state gives them later); in the same launch, the depth keys when
// asked for (the binning's first pass over the Gaussians is this one) and the radii handed to
// the caller (radii_out: a copy of the state's, which the backward reads, so that the caller's
// edits cannot reach them; no copy launched after).
void preprocess(const Camera<float>& cam, const GaussianInputs<float>& in,
                const GaussianState<float>& state, DepthKeys depth, int* radii_out,
                cudaStream_t stream);

// A sort's keys (or values) and a second array of their size. The radix sort moves the data
// from one to the other at each pass and leaves it in either (`current`; CUB's DoubleBuffer):
// sorting so takes no scratch copy of the data.
template <typename T>
struct SortBuffers {
  T* buffers[2];
  int current = 0;
  T* sorted() const { return buffers[current]; }
};

// Inclusive prefix sum of tiles_touched into offsets. With temp == nullptr, only sets
// temp_bytes to the scratch size needed. Returns CUB's status (it launches kernels itself).
cudaError_t inclusive_scan(void* temp, size_t& temp_bytes, const int64_t* tiles_touched,
                           int64_t* offsets, int count, cudaStream_t stream);

// One (tile | depth) key and Gaussian id per tile a Gaussian touches, in index order.
void duplicate_keys(const Camera<float>& cam, int count, const GaussianState<float>& state,
                    const int64_t* offsets, uint64_t* keys, int* ids, cudaStream_t stream);

// Number of key bits to sort: 32 depth bits and as many tile bits as the grid needs.
int sort_end_bit(int tiles);

// Stable radix sort of (key, id) pairs over bits [0, end_bit). temp and the returned status as
// for inclusive_scan; the sorted pairs are where keys and ids say once it has run.
cudaError_t sort_pairs(void* temp, size_t& temp_bytes, SortBuffers<uint64_t>& keys,
                       SortBuffers<int>& ids, int pairs, int end_bit, cudaStream_t stream);

// tile_ranges (tiles x 2, zeroed by the caller) from the sorted keys.
void identify_tile_ranges(const uint64_t* sorted_keys, int pairs, int* tile_ranges,
                          cudaStream_t stream);

// Depth-first binning (CudaTuning::depth_first_sort), the same lists as the above: the
// Gaussians sorted by depth once (P keys of 31 bits), then their pairs written in that order
// with 32-bit tile keys and sorted stably over the tile bits alone (a few passes over 8 bytes a
// pair instead of 32 + tile bits over 12). Ties in depth keep index order in both ways.
// The preprocess writes the depth keys (DepthKeys); sort_depths sorts them (temp, the returned
// status and the sorted data as for sort_pairs).
cudaError_t sort_depths(void* temp, size_t& temp_bytes, SortBuffers<uint32_t>& keys,
                        SortBuffers<int>& order, int count, cudaStream_t stream);
// Inclusive prefix sum of tiles_touched[order[k]] over k into offsets: the pairs' offsets in
// depth order, tiles_touched read where it lies (no gathered copy, no launch for one).
cudaError_t inclusive_scan_by_depth(void* temp, size_t& temp_bytes, const int64_t* tiles_touched,
                                    const int* order, int64_t* offsets, int count,
                                    cudaStream_t stream);
// One (tile, Gaussian) pair per tile of each Gaussian, by depth (order), from the scanned offsets;
// with `by_rank` the pair names the Gaussian's rank in depth order (its row of the compact
// state), else its index.
void duplicate_tile_keys(const Camera<float>& cam, int count, const GaussianState<float>& state,
                         const int* order, const int64_t* offsets, uint32_t* keys, int* ids,
                         bool by_rank, cudaStream_t stream);
// The compact state (CudaTuning::compact_state): row k of `compact` (means2d, conic_opacity and
// features: colour and depth) for Gaussian order[k], projected again from the inputs, for the
// first `rows` Gaussians by depth (those with tiles); gaussians[k] = order[k]. The preprocess
// then stores the binning alone (a GaussianState without rows).
void compact_state(const Camera<float>& cam, const GaussianInputs<float>& in, const int* order,
                   int rows, const GaussianState<float>& compact, int* gaussians,
                   cudaStream_t stream);
cudaError_t sort_tile_keys(void* temp, size_t& temp_bytes, SortBuffers<uint32_t>& keys,
                           SortBuffers<int>& ids, int pairs, int tiles, cudaStream_t stream);
void identify_tile_ranges(const uint32_t* sorted_keys, int pairs, int* tile_ranges,
                          cudaStream_t stream);

// Techniques of the render and binning that the benchmarks switch off one at a time (all on by
// default). None changes an output: warp skipping passes only splats that are skipped anyway,
// the scatter sum adds the same gradients in another order, and the depth-first sort makes the
// same tile lists.
struct CudaTuning {
  bool warp_skip = true;         // a warp passes the splats that cannot reach its pixels
  bool scatter_reduce = true;    // warp sums of gradients by warp_scatter_add, not one tree each
  bool depth_first_sort = true;  // the binning sorts by depth once, then pairs by tile alone
  // ... and the render's state keeps the Gaussians with tiles alone, in depth order
  // (TileLists::gaussians); with depth_first_sort
  bool compact_state = true;
  bool split_tiles = true;       // long tile lists walked in parts by the backward (TileSplits)
  // ... and by the forward (with split_tiles): 1 always, 0 never, -1 (the default) where the
  // image's tiles fill at most two waves of the forward's blocks (split_forward below).
  int split_forward = -1;
  bool short_forward_parts = true;  // ... in parts half the backward's (with split_forward)
  bool parts_first = true;       // the backward's blocks of split parts start before the tiles'
  int split_length = 0;          // tests: positions per part (a multiple of 256); 0: chosen
  // The feature kernels walk split lists in parts while their buffers (a row of channel sums
  // per pixel and part) stay under this many bytes, else whole lists (tests lower it).
  int64_t feature_split_bytes = int64_t(64) << 20;
};
CudaTuning& cuda_tuning();

// TileSplits::length for a forward of `pairs` tile pairs on a GPU of `multiprocessors` SMs (0:
// no split): the splits' state costs 20 bytes a pixel of a split, (pairs - 1) / length at most.
int split_length(int64_t pairs, int multiprocessors);
// Whether the forward of an image of `tiles` tiles on a GPU of `multiprocessors` SMs walks split
// lists in parts (CudaTuning::split_forward): then the caller gives forward_splits to render(),
// with their composites. By default where the tiles number at most kSplitForwardTilesPerSm an
// SM (two waves of the forward's 8 blocks an SM on sm_90): there a block per tile leaves the
// kernel waiting on its longest lists, while with more waves the blocks balance themselves and
// the split's second kernel only adds to the walk (the H200's ablation: the split forward 1.02x
// and 2.74x faster at 648x420, 1,107 tiles; 0.97x and 0.65x at 1296x840, 4,293 tiles;
// doc/performance.md, "The split forward by waves").
constexpr int kSplitForwardTilesPerSm = 16;
bool split_forward(int tiles, int multiprocessors);
// The split forward's part length for the backward's `length`: half of it with
// CudaTuning::short_forward_parts (split_length then chooses whole pairs of batches), so that
// the forward's two kernels in series (a part walked in the first, a part in the second for
// the pixels it stops) take about one backward part, where the forward runs twice the blocks
// at once (doc/performance.md); else `length`.
int forward_split_length(int length);

// Channels per block of the feature kernels (4, 8 or 16).
int feature_chunk(int channels);

// Fills splits.parts from the tile ranges, and stores the length on the device, where the
// backward reads it (nothing without capacity).
void plan_splits(const TileSplits& splits, int tiles, const int* tile_ranges,
                 cudaStream_t stream);

// One 16x16 block per tile, front to back; the median with it when asked for, and the feature
// map (when asked for) by a second kernel, one block per tile (and per part of a split list,
// given extra.feature_parts) and chunk of channels. Tiles with
// lists longer than splits.length (plan_splits called before) save the state at their splits
// for the backward. Given forward_splits.composite (CudaTuning::split_forward; its own parts,
// of forward_split_length, planned too, with `state` and state_every for the backward's), the
// parts of lists longer than its length are walked at once, one block each, and a second
// kernel finishes each pixel in the part where it stops (render_resolve_kernel); the feature
// map's parts are the backward's (`splits`).
void render(const Camera<float>& cam, const GaussianState<float>& state, TileLists lists,
            const PixelBuffers<float>& px, const OptionalOutputs<float>& extra,
            const TileSplits& splits, const TileSplits& forward_splits, cudaStream_t stream);

// The ordered backward (torch.use_deterministic_algorithms(True)): each render backward
// kernel sums each pair's gradient over its block's pixels in a fixed order into the pair's row
// at its list position, and gather_pair_sums adds each Gaussian's rows in list order, as the CPU
// backend does, where atomics would add the warps' totals in whichever order they come. Rows:
// the maps' (the SplatGrad's ten values, then AbsGS's two), 48 bytes a pair; with feature
// channels, a row per chunk of channels (the six splat values, then the chunk's channels), and
// with AbsGS's statistic the absolute kernel's two. The contribution statistics take the same
// way for their two float sums (rows of 2).
constexpr int kPairValues = kSplatGradValues + 2;

struct PairSums {
  float* rows = nullptr;            // pairs x kPairValues, zeros first; null: atomics
  const int64_t* order = nullptr;   // the pairs' positions sorted by Gaussian, stably
  const int64_t* starts = nullptr;  // count + 1: Gaussian i's first entry of `order`
  float* feature_rows = nullptr;    // pairs x feature_chunks x (6 + feature_chunk), zeros first
  int feature_chunk = 0, feature_chunks = 0;  // feature_chunk(channels), chunks of the channels
  float* absolute_rows = nullptr;   // pairs x 2, zeros first: with features and AbsGS

  DGRD_HD bool ordered() const { return rows != nullptr; }
};

// Each pair's Gaussian, gaussians[p] = lists.gaussian(point_list[p]), for p < count.
void pair_gaussians(TileLists lists, int64_t count, int* gaussians, cudaStream_t stream);

// Adds to touch_count (zeroed by the caller, one entry a Gaussian) the pixels each Gaussian
// touches (`touches`, blend.h: MonoGS's n_touched), one block per tile, from the forward's
// state and tile lists.
void count_touches(const Camera<float>& cam, const GaussianState<float>& state, TileLists lists,
                   int* touch_count, cudaStream_t stream);

// Adds to contribution (zeroed by the caller, kContributionValues a Gaussian, blend.h: weight
// sum, weight max, pixels, dominated pixels, opacity-transmittance sum) each Gaussian's
// contribution statistics, one block per tile, from the forward's state and tile lists; writes
// every pixel's dominant Gaussian to dominant_map (height x width; -1 where nothing is blended).
// With pairs.rows (the ordered way: pairs x 2, zeros first), the weight sums and
// opacity-transmittance sums of the `count` Gaussians are written from their pairs' rows.
void gaussian_contributions(const Camera<float>& cam, const GaussianState<float>& state,
                            TileLists lists, float* contribution, int* dominant_map,
                            const PairSums& pairs, int count, cudaStream_t stream);

// The opacity field (opacity_field.h; cpu::project_points and its two sequels say what each
// step writes), one thread a point, one a Gaussian, then one block a tile.
void project_points(const Camera<float>& cam, const float* points, int count,
                    PointOnScreen<float>* rows, int* keys, float* opacity, cudaStream_t stream);
void ray_quadrics(const Camera<float>& cam, const GaussianInputs<float>& in,
                  RayQuadric<float>* quadrics, cudaStream_t stream);
void point_opacity(const Camera<float>& cam, const GaussianState<float>& state, TileLists lists,
                   const RayQuadric<float>* quadrics, const PointOnScreen<float>* points,
                   const int* order, const int* point_ranges, float* opacity,
                   cudaStream_t stream);

// Where the render backward sums each Gaussian's SplatGrad: value k (in the order mean2d x, y,
// conic a, b, c, opacity, feature r, g, b, depth) of Gaussian i at value[k], i row strides on.
// The glue lays the ten over rows of the input gradients that preprocess_backward writes only
// after reading them, row i by Gaussian i's thread, so the sums take no memory of their own.
struct SplatSums {
  float* value[kSplatGradValues];
  uint32_t row_bytes[kSplatGradValues];

  DGRD_HD float* at(int k, int i) const { return row(value[k], row_bytes[k], i); }
  // In bytes and unsigned 32 x 32 -> 64 bits: one wide multiply-add, where a float stride or
  // int64_t would take a shift or a 64-bit multiply too.
  static DGRD_HD float* row(float* first, uint32_t row_bytes, int i) {
    return reinterpret_cast<float*>(reinterpret_cast<char*>(first) +
                                    uint64_t(uint32_t(i)) * row_bytes);
  }
};

// The ordered backward's second pass: every Gaussian's sums, AbsGS's statistic where
// extra.mean2d_abs is given and the feature gradients where pairs has feature rows, written
// from its pairs' rows, added in list order.
void gather_pair_sums(int count, const PairSums& pairs, const SplatSums& sums,
                      const OptionalGrads<float>& extra, cudaStream_t stream);

// Sets every Gaussian's sums to zero (before render_backward).
void clear_splat_sums(const SplatSums& sums, int count, cudaStream_t stream);

// One 16x16 block per tile and part of a split list (the forward's splits), back to front;
// adds each Gaussian's gradient into its sums (cleared by the caller) once per warp, and the
// features' into extra.features_grad (zeroed by the caller), one block per tile (and per part,
// given extra.feature_dots), when the feature map has an upstream gradient. With pairs.rows
// (the ordered backward), into the pairs' rows instead, for gather_pair_sums.
void render_backward(const Camera<float>& cam, const GaussianState<float>& state, TileLists lists,
                     const PixelBuffers<float>& px, PixelGrads<float> grads,
                     const OptionalGrads<float>& extra, const SplatSums& sums,
                     const TileSplits& splits, const PairSums& pairs, cudaStream_t stream);

// Number of CameraGrad partial sums preprocess_backward needs for `count` Gaussians.
int camera_grad_partials(int count);

// Writes every value of `out`, zeros where no gradient flows (zero_unwritten_grads), so the
// caller need not fill it; each Gaussian's sums are read before any of its rows of `out` is
// written. camera: null, or where the camera gradient summed over all Gaussians is written
// (then partials holds camera_grad_partials(count) scratch entries).
void preprocess_backward(const Camera<float>& cam, const GaussianInputs<float>& in,
                         const int* radii, const SplatSums& sums,
                         const GaussianGrads<float>& out, CameraGrad<float>* camera,
                         CameraGrad<float>* partials, cudaStream_t stream);

void mark_visible(const float* viewmatrix, const float* positions, int count, bool* visible,
                  cudaStream_t stream);

}  // namespace gpu
}  // namespace dgrd
